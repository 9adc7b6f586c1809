/**
 * Reused buffers for received STREAM data. Every 64 KiB of bulk transfer
 * needed a fresh 64 KiB ArrayBuffer: V8 gets those from the system, so each
 * one cost page faults on first touch and work for the garbage collector's
 * helper threads, together about a tenth of the guest agent's CPU. Buffers
 * of at least half that size come from here instead, and whoever has finished
 * with a chunk (the bridge, once its socket took it) hands it back.
 *
 * Only buffers made here are taken back, each at most once, and at most
 * {@linkcode MAX_FREE} wait for reuse. A chunk must not be touched after it
 * is handed back: the next connection's data goes into it.
 *
 * @module
 */

/** Size of every pooled buffer: the largest STREAM read. */
export const POOLED_BYTES = 64 * 1024;

/**
 * Smaller requests get a buffer of their own size: at most twice the bytes
 * asked for are held, which keeps the bound on memory behind unread data.
 */
const MIN_POOLED = POOLED_BYTES / 2;

/** Free buffers kept: 4 MiB per process at most. */
const MAX_FREE = 64;

const made = new WeakSet<ArrayBuffer>();
const free = new Set<ArrayBuffer>();

/** A buffer of `size` bytes, pooled when `size` is large enough. */
export function allocChunk(size: number): Uint8Array {
  if (size < MIN_POOLED || size > POOLED_BYTES) return new Uint8Array(size);
  let buffer: ArrayBuffer | undefined;
  for (buffer of free) break;
  if (buffer === undefined) {
    buffer = new ArrayBuffer(POOLED_BYTES);
    made.add(buffer);
  } else {
    free.delete(buffer);
  }
  return new Uint8Array(buffer, 0, size);
}

/**
 * Hands a chunk's buffer back for reuse, if it came from
 * {@linkcode allocChunk}'s pool; anything else is left to the collector.
 */
export function recycleChunk(chunk: Uint8Array): void {
  const buffer = chunk.buffer;
  if (
    buffer instanceof ArrayBuffer && made.has(buffer) && free.size < MAX_FREE
  ) {
    free.add(buffer);
  }
}

/** Buffers waiting for reuse (for tests). */
export function freeChunks(): number {
  return free.size;
}
