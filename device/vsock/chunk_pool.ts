/**
 * Reused buffers for received STREAM data. Allocating an `ArrayBuffer` is
 * slow on these machines, whatever its size: 1.1-1.3 us for 64 bytes, 3.6
 * us for 4 KiB and 4.6 us for 64 KiB (Deno 2.9 and Node 20 alike; Deno
 * keeps no typed array on V8's heap), plus page faults on first touch and
 * work for the garbage collector. Each received packet needs a buffer, so
 * that was a 64-byte round trip's 2.5 us and, with 4 KiB packets, a large
 * part of the guest agent's time. Buffers come from here instead, and
 * whoever has finished with a chunk (the bridge, once its socket took it)
 * hands it back.
 *
 * The pool keeps buffers in powers of two from {@linkcode MIN_POOLED} bytes
 * up to a joined read of four 64 KiB packets ({@linkcode POOLED_BYTES}); a
 * request gets the smallest that holds it, so no chunk holds more than
 * twice its bytes (or {@linkcode MIN_POOLED}). The buffer handed back last
 * is given out first: it is the one most likely still in the cache.
 *
 * Only buffers made here are taken back, each at most once, and a bounded
 * number of each size wait for reuse ({@linkcode MAX_FREE_BYTES}). A chunk
 * must not be touched after it is handed back: the next connection's data
 * goes into it.
 *
 * @module
 */

/** The largest pooled buffer: the largest STREAM read. */
export const POOLED_BYTES = 256 * 1024;

/** The smallest pooled buffer; smaller requests get one of these. */
export const MIN_POOLED = 64;

/**
 * Bytes of free buffers kept per size, and at most
 * {@linkcode MAX_FREE_BUFFERS} of them: 16 MiB per process at most (12 for
 * the three sizes from 64 KiB, 4 for all the smaller ones together). With
 * one 4 MiB budget for every size, guest-to-host transfer from the agent
 * ran at 693 MiB/s against 1,217 for 64 KiB reads (same minutes), and with
 * one of 12 MiB at 1,480 against 1,201: most likely the 64 KiB buffers a
 * transfer hands back filled the budget, and every large read then got a
 * new buffer.
 */
const MAX_FREE_BYTES = 4 << 20;

/** Most free buffers kept per size (the bound for the small sizes). */
const MAX_FREE_BUFFERS = 64;

/** The free buffers of one size, the last handed back on top. */
interface Shelf {
  size: number;
  buffers: ArrayBuffer[];
  /** How many may wait here. */
  room: number;
}

const SMALLEST_SHIFT = Math.log2(MIN_POOLED);
const shelves: Shelf[] = [];
for (let size = MIN_POOLED; size <= POOLED_BYTES; size *= 2) {
  shelves.push({
    size,
    buffers: [],
    room: Math.min(MAX_FREE_BUFFERS, MAX_FREE_BYTES / size),
  });
}
const made = new WeakSet<ArrayBuffer>();

/** The shelf of the smallest pooled size that holds `size` bytes. */
function shelfFor(size: number): Shelf {
  // ceil(log2(size)) for size >= 2, from the leading zeros of size - 1.
  const shift = size <= MIN_POOLED ? SMALLEST_SHIFT : 32 - Math.clz32(size - 1);
  return shelves[shift - SMALLEST_SHIFT]!;
}

/** A buffer of `size` bytes, pooled unless `size` is 0 or too large. */
export function allocChunk(size: number): Uint8Array {
  if (size <= 0 || size > POOLED_BYTES) return new Uint8Array(size);
  const shelf = shelfFor(size);
  let buffer = shelf.buffers.pop();
  if (buffer === undefined) {
    buffer = new ArrayBuffer(shelf.size);
    made.add(buffer);
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
  const shelf = shelfFor(buffer.byteLength);
  // A short scan (a shelf holds at most 64), cheaper than keeping a set.
  if (shelf.buffers.length >= shelf.room || shelf.buffers.includes(buffer)) {
    return;
  }
  shelf.buffers.push(buffer);
}

/** Bytes of the buffers of `size` waiting for reuse (for tests). */
export function freeBytes(size: number): number {
  const shelf = shelves.find((s) => s.size === size);
  return shelf === undefined ? 0 : shelf.buffers.length * size;
}

/** Buffers waiting for reuse (for tests). */
export function freeChunks(): number {
  let n = 0;
  for (const shelf of shelves) n += shelf.buffers.length;
  return n;
}
