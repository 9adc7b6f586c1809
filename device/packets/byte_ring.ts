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
  /** Bytes skipped at the end of the ring before each allocation. */
  #skipped: Uint32Array;
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
    this.#skipped = new Uint32Array(maxAllocations);
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
    this.#skipped[slot] = skipped;
    this.#released[slot] = 0;
    this.#count++;
    this.#used += length + skipped;
    this.#head = at + length;
    if (this.#head === this.size) this.#head = 0;
    return { offset: this.start + at, ticket: slot };
  }

  /**
   * Gives back the end of the newest allocation, keeping its first
   * `length` bytes (at least one): for a packet whose payload came out
   * shorter than the space taken for it.
   *
   * @throws {RangeError} if `ticket` is not the newest allocation or
   * `length` is not in `[1, its length]`.
   */
  shrinkLast(ticket: number, length: number): void {
    const slot = this.#newest(ticket);
    const skipped = this.#skipped[slot]!;
    const had = this.#lens[slot]! - skipped;
    if (!Number.isInteger(length) || length < 1 || length > had) {
      throw new RangeError(
        `Cannot shrink an allocation of ${had} bytes to ${length}`,
      );
    }
    this.#lens[slot] = length + skipped;
    this.#used -= had - length;
    this.#head = this.#starts[slot]! + length;
    if (this.#head === this.size) this.#head = 0;
  }

  /**
   * Takes back the newest allocation as if it had never been made: for
   * space taken for a packet that got no bytes.
   *
   * @throws {RangeError} if `ticket` is not the newest allocation.
   */
  undoLast(ticket: number): void {
    const slot = this.#newest(ticket);
    const skipped = this.#skipped[slot]!;
    this.#used -= this.#lens[slot]!;
    this.#count--;
    this.#head = skipped > 0 ? this.size - skipped : this.#starts[slot]!;
    if (this.#count === 0) this.#head = this.#tail = 0;
  }

  #newest(ticket: number): number {
    const slot = (this.#first + this.#count - 1) % this.#starts.length;
    if (this.#count === 0 || ticket !== slot || this.#released[slot] === 1) {
      throw new RangeError(`Ticket ${ticket} is not the newest allocation`);
    }
    return slot;
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
