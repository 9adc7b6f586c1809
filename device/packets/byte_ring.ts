/**
 * A first-in first-out allocator of contiguous byte ranges over a window of
 * the region: the driver's transmit buffer space. Allocations are released in
 * any order; space is reclaimed from the oldest end once the oldest
 * allocations are released, which is how a device usually completes them.
 *
 * @module
 */

/** FIFO allocator over `[start, start + size)`. */
export class ByteRing {
  readonly start: number;
  readonly size: number;
  /** Allocation start offsets (relative) in allocation order. */
  #starts: Uint32Array;
  #lens: Uint32Array;
  #released: Uint8Array;
  #first = 0;
  #count = 0;
  /** Relative offset where the next allocation goes. */
  #head = 0;
  /** Relative offset of the oldest live allocation (== #head when empty). */
  #tail = 0;
  #used = 0;

  /**
   * @param maxAllocations how many allocations may be live at once (the
   * queue size is a natural bound: one per posted chain).
   */
  constructor(start: number, size: number, maxAllocations: number) {
    this.start = start;
    this.size = size;
    this.#starts = new Uint32Array(maxAllocations);
    this.#lens = new Uint32Array(maxAllocations);
    this.#released = new Uint8Array(maxAllocations);
  }

  /** Bytes currently allocated (including space skipped at the wrap). */
  get used(): number {
    return this.#used;
  }

  /** The largest allocation that would succeed now. */
  largestFree(): number {
    if (this.#count === this.#starts.length) return 0;
    if (this.#count === 0) return this.size;
    if (this.#head === this.#tail) return 0;
    if (this.#head > this.#tail) {
      return Math.max(this.size - this.#head, this.#tail);
    }
    return this.#tail - this.#head;
  }

  /**
   * Allocates `length` contiguous bytes. Returns `{ offset, ticket }` in the
   * region's coordinates, or `null` when no contiguous space is free now.
   * Pass the ticket to {@linkcode ByteRing.release}.
   */
  alloc(length: number): { offset: number; ticket: number } | null {
    if (length <= 0 || length > this.size) return null;
    if (this.#count === this.#starts.length) return null;
    let at: number;
    let skipped = 0;
    if (this.#count === 0) {
      this.#head = this.#tail = 0;
      at = 0;
    } else if (this.#head === this.#tail) {
      return null; // live allocations cover the whole ring
    } else if (this.#head > this.#tail) {
      // Free space is [head, size) and [0, tail).
      if (this.size - this.#head >= length) at = this.#head;
      else if (this.#tail >= length) {
        skipped = this.size - this.#head;
        at = 0;
      } else return null;
    } else {
      // Wrapped: free space is [head, tail).
      if (this.#tail - this.#head >= length) at = this.#head;
      else return null;
    }
    const slot = (this.#first + this.#count) % this.#starts.length;
    this.#starts[slot] = at;
    // The bytes skipped at the end belong to this allocation for accounting,
    // so they come back when it is released.
    this.#lens[slot] = length + skipped;
    this.#released[slot] = 0;
    this.#count++;
    this.#used += length + skipped;
    this.#head = at + length;
    if (this.#head === this.size) this.#head = 0;
    return { offset: this.start + at, ticket: slot };
  }

  /** Releases an allocation; space returns once all older ones are released. */
  release(ticket: number): void {
    this.#released[ticket] = 1;
    while (this.#count > 0 && this.#released[this.#first] === 1) {
      this.#released[this.#first] = 0;
      this.#used -= this.#lens[this.#first]!;
      this.#count--;
      this.#first = (this.#first + 1) % this.#starts.length;
      if (this.#count > 0) this.#tail = this.#starts[this.#first]!;
      else this.#tail = this.#head;
    }
  }
}
