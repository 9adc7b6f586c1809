/**
 * A reusable list of (offset, length) byte ranges in the region: the buffers
 * of one or more descriptor chains, flattened. Gather and scatter copy through
 * it with `TypedArray.set`, one call per segment.
 *
 * @module
 */

import type { Region } from "../shm/region.ts";

/** Growable list of region ranges; it never shrinks, so reuse costs nothing. */
export class SegmentList {
  offsets: Uint32Array;
  lengths: Uint32Array;
  count = 0;
  /** Sum of `lengths[0..count)`. */
  bytes = 0;

  constructor(initialCapacity = 8) {
    this.offsets = new Uint32Array(initialCapacity);
    this.lengths = new Uint32Array(initialCapacity);
  }

  clear(): void {
    this.count = 0;
    this.bytes = 0;
  }

  /** Appends a range; zero-length ranges are skipped (they carry nothing). */
  push(offset: number, length: number): void {
    if (length === 0) return;
    if (this.count === this.offsets.length) this.#grow();
    this.offsets[this.count] = offset;
    this.lengths[this.count] = length;
    this.count++;
    this.bytes += length;
  }

  /** Drops ranges from the end until `count` remain. */
  truncate(count: number): void {
    while (this.count > count) {
      this.count--;
      this.bytes -= this.lengths[this.count]!;
    }
  }

  /**
   * Copies `dest.length` bytes starting `skip` bytes into the list. Returns
   * how many bytes were copied (less than asked when the list is shorter).
   */
  gather(region: Region, skip: number, dest: Uint8Array): number {
    let done = 0;
    for (let i = 0; i < this.count && done < dest.length; i++) {
      const len = this.lengths[i]!;
      if (skip >= len) {
        skip -= len;
        continue;
      }
      const n = Math.min(len - skip, dest.length - done);
      dest.set(region.span(this.offsets[i]! + skip, n), done);
      done += n;
      skip = 0;
    }
    return done;
  }

  /**
   * A view of `length` bytes at logical position `at` when they lie inside a
   * single segment (the common case: no copy), otherwise `null`.
   */
  contiguous(region: Region, at: number, length: number): Uint8Array | null {
    for (let i = 0; i < this.count; i++) {
      const len = this.lengths[i]!;
      if (at < len) {
        return at + length <= len
          ? region.span(this.offsets[i]! + at, length)
          : null;
      }
      at -= len;
    }
    return length === 0 ? region.span(0, 0) : null;
  }

  #grow(): void {
    const offsets = new Uint32Array(this.offsets.length * 2);
    const lengths = new Uint32Array(this.lengths.length * 2);
    offsets.set(this.offsets);
    lengths.set(this.lengths);
    this.offsets = offsets;
    this.lengths = lengths;
  }
}

/**
 * Writes into a {@linkcode SegmentList} front to back, remembering where it
 * stopped so that a packet can be written in several pieces.
 */
export class ScatterCursor {
  #list: SegmentList = new SegmentList(0);
  #seg = 0;
  #within = 0;
  /** Bytes written since {@linkcode ScatterCursor.reset}. */
  written = 0;

  reset(list: SegmentList, seg = 0): void {
    this.#list = list;
    this.#seg = seg;
    this.#within = 0;
    this.written = 0;
  }

  /** Index of the segment the next byte goes into. */
  get segment(): number {
    return this.#seg;
  }

  /**
   * Copies as much of `src` as fits before segment `endSeg`; returns the
   * number of bytes copied.
   */
  write(region: Region, src: Uint8Array, endSeg = this.#list.count): number {
    const list = this.#list;
    let done = 0;
    while (done < src.length && this.#seg < endSeg) {
      const room = list.lengths[this.#seg]! - this.#within;
      const n = Math.min(room, src.length - done);
      region.write(
        list.offsets[this.#seg]! + this.#within,
        // Most packets land in one segment: no view needed then.
        n === src.length ? src : src.subarray(done, done + n),
      );
      done += n;
      this.#within += n;
      if (this.#within === list.lengths[this.#seg]!) {
        this.#seg++;
        this.#within = 0;
      }
    }
    this.written += done;
    return done;
  }
}
