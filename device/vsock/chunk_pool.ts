/**
 * Reused buffers for received STREAM data. Every 64 KiB of bulk transfer
 * needed a fresh 64 KiB ArrayBuffer: V8 gets those from the system, so each
 * one cost page faults on first touch and work for the garbage collector's
 * helper threads, together about a tenth of the guest agent's CPU. Buffers
 * of at least half a pooled size come from here instead, and whoever has
 * finished with a chunk (the bridge, once its socket took it) hands it back.
 *
 * The pool keeps buffers of a few sizes, from one 64 KiB packet's payload
 * up to a joined read of four ({@linkcode POOLED_BYTES}); a request gets the
 * smallest that holds it, so no chunk holds more than twice its bytes.
 *
 * Only buffers made here are taken back, each at most once, and at most
 * {@linkcode MAX_FREE_BYTES} of each size wait for reuse. A chunk must not
 * be touched after it is handed back: the next connection's data goes into
 * it.
 *
 * @module
 */

/** The largest pooled buffer: the largest STREAM read. */
export const POOLED_BYTES = 256 * 1024;

/** Sizes of the pooled buffers, smallest first, each twice the one before. */
const SIZES = [64 * 1024, 128 * 1024, POOLED_BYTES];

/**
 * Smaller requests get a buffer of their own size: at most twice the bytes
 * asked for are held, which keeps the bound on memory behind unread data.
 */
const MIN_POOLED = 32 * 1024;

/**
 * Bytes of free buffers kept per size: 12 MiB per process at most. With one
 * 4 MiB budget for every size, guest-to-host transfer from the agent ran
 * at 693 MiB/s against 1,217 for 64 KiB reads (same minutes), and with one
 * of 12 MiB at 1,480 against 1,201: most likely the 64 KiB buffers a
 * transfer hands back filled the budget, and every large read then got a
 * new buffer.
 */
const MAX_FREE_BYTES = 4 << 20;

/** The free buffers of one size, and their bytes. */
interface Shelf {
  buffers: Set<ArrayBuffer>;
  bytes: number;
}

const made = new WeakSet<ArrayBuffer>();
const shelves = new Map<number, Shelf>(
  SIZES.map((size) => [size, { buffers: new Set(), bytes: 0 }]),
);

/** A buffer of `size` bytes, pooled when `size` is large enough. */
export function allocChunk(size: number): Uint8Array {
  if (size < MIN_POOLED || size > POOLED_BYTES) return new Uint8Array(size);
  const pooled = SIZES.find((s) => s >= size)!;
  const shelf = shelves.get(pooled)!;
  let buffer: ArrayBuffer | undefined;
  for (buffer of shelf.buffers) break;
  if (buffer === undefined) {
    buffer = new ArrayBuffer(pooled);
    made.add(buffer);
  } else {
    shelf.buffers.delete(buffer);
    shelf.bytes -= pooled;
  }
  return new Uint8Array(buffer, 0, size);
}

/**
 * Hands a chunk's buffer back for reuse, if it came from
 * {@linkcode allocChunk}'s pool; anything else is left to the collector.
 */
export function recycleChunk(chunk: Uint8Array): void {
  const buffer = chunk.buffer;
  if (!(buffer instanceof ArrayBuffer) || !made.has(buffer)) return;
  const size = buffer.byteLength;
  const shelf = shelves.get(size)!;
  if (shelf.buffers.has(buffer) || shelf.bytes + size > MAX_FREE_BYTES) return;
  shelf.buffers.add(buffer);
  shelf.bytes += size;
}

/** Bytes of the buffers of `size` waiting for reuse (for tests). */
export function freeBytes(size: number): number {
  return shelves.get(size)?.bytes ?? 0;
}

/** Buffers waiting for reuse (for tests). */
export function freeChunks(): number {
  let n = 0;
  for (const shelf of shelves.values()) n += shelf.buffers.size;
  return n;
}
