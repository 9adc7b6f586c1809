/**
 * The shared region: one bounds-checked window over the bytes both sides of
 * the transport can write.
 *
 * Everything the other side hands us (descriptor addresses, lengths, ring
 * offsets) is an offset into this region. Every access goes through
 * {@linkcode Region.span} or one of the typed accessors, which check
 * `offset + length <= size` before touching memory. Offsets are plain
 * numbers: regions are at most 2^31 bytes and addresses above 2^32 are
 * rejected when they are decoded, so `offset + length` is computed exactly
 * and overflow cannot wrap past the check.
 *
 * @module
 */

/** Largest region we map: the ivshmem BAR is a power of two and 2 GiB keeps
 * every offset a small integer in V8 and every `offset + length` exact. */
export const MAX_REGION_SIZE = 2 ** 31;

/** Smallest region: one page, enough for a header and a tiny queue. */
export const MIN_REGION_SIZE = 4096;

/** Thrown when an access falls outside the region or the region is closed. */
export class RegionAccessError extends RangeError {
  override name = "RegionAccessError";
}

const HOST_IS_LITTLE_ENDIAN =
  new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/**
 * How a region's memory can be reached from another thread (the waker
 * worker watches ring indices from one): a `SharedArrayBuffer` it can be
 * handed, a mapping it can re-wrap from its address, or neither.
 */
export type RegionBacking =
  | { kind: "shared"; buffer: SharedArrayBuffer }
  | { kind: "mapped"; address: bigint }
  | { kind: "private" };

/**
 * A bounds-checked view over shared memory.
 *
 * Ring indices are read and written with `Atomics` through the 16- and 32-bit
 * accessors; see `docs/memory-ordering.md` for why that is enough on x86-64
 * and arm64.
 */
export class Region {
  readonly size: number;
  /** Where the memory lives, for handing it to another thread. */
  readonly backing: RegionBacking;
  #buffer: ArrayBufferLike;
  #bytes: Uint8Array;
  #view: DataView;
  #u16: Uint16Array;
  #u32: Uint32Array;
  #closed = false;

  /**
   * Wraps an existing buffer (an in-memory one for tests, or a mapping).
   *
   * @throws {RangeError} if the size is not a power of two between
   * {@linkcode MIN_REGION_SIZE} and {@linkcode MAX_REGION_SIZE}, or the host
   * is big-endian (virtio is little-endian and the ring indices are accessed
   * as host-order typed arrays).
   */
  constructor(
    buffer: ArrayBuffer | SharedArrayBuffer,
    backing?: RegionBacking,
  ) {
    if (!HOST_IS_LITTLE_ENDIAN) {
      throw new RangeError("Cannot use a region: the host is big-endian");
    }
    checkRegionSize(buffer.byteLength);
    this.size = buffer.byteLength;
    this.#buffer = buffer;
    this.backing = backing ??
      (buffer instanceof SharedArrayBuffer
        ? { kind: "shared", buffer }
        : { kind: "private" });
    this.#bytes = new Uint8Array(buffer);
    this.#view = new DataView(buffer);
    this.#u16 = new Uint16Array(buffer);
    this.#u32 = new Uint32Array(buffer);
  }

  /**
   * A zeroed in-memory region, for tests and in-process use. It is backed by
   * a `SharedArrayBuffer` so that a waker worker can watch it too.
   */
  static alloc(size: number): Region {
    checkRegionSize(size);
    return new Region(new SharedArrayBuffer(size));
  }

  /** Whether `[offset, offset + length)` lies inside the region. */
  contains(offset: number, length: number): boolean {
    return Number.isInteger(offset) && Number.isInteger(length) &&
      offset >= 0 && length >= 0 && offset + length <= this.size;
  }

  /**
   * A view of `length` bytes at `offset`, sharing memory with the region.
   * Valid until the region is closed; do not keep it across an `await` that
   * might close the region.
   *
   * @throws {RegionAccessError} if the range is outside the region.
   */
  span(offset: number, length: number): Uint8Array {
    this.#check(offset, length);
    return this.#bytes.subarray(offset, offset + length);
  }

  /** Copies `src` into the region at `offset`. */
  write(offset: number, src: Uint8Array): void {
    this.#check(offset, src.length);
    this.#bytes.set(src, offset);
  }

  /** Copies `dest.length` bytes at `offset` out of the region. */
  read(offset: number, dest: Uint8Array): void {
    this.#check(offset, dest.length);
    dest.set(this.#bytes.subarray(offset, offset + dest.length));
  }

  /** Fills `length` bytes at `offset` with `value`. */
  fill(offset: number, length: number, value = 0): void {
    this.#check(offset, length);
    this.#bytes.fill(value, offset, offset + length);
  }

  getU8(offset: number): number {
    this.#check(offset, 1);
    return this.#bytes[offset]!;
  }

  setU8(offset: number, value: number): void {
    this.#check(offset, 1);
    this.#bytes[offset] = value;
  }

  getU16(offset: number): number {
    this.#check(offset, 2);
    return this.#view.getUint16(offset, true);
  }

  setU16(offset: number, value: number): void {
    this.#check(offset, 2);
    this.#view.setUint16(offset, value, true);
  }

  getU32(offset: number): number {
    this.#check(offset, 4);
    return this.#view.getUint32(offset, true);
  }

  setU32(offset: number, value: number): void {
    this.#check(offset, 4);
    this.#view.setUint32(offset, value, true);
  }

  /**
   * Reads a le64 that the other side wrote as an address or size. Returns it
   * as a number, or -1 when it is at or above 2^32: no region is that large,
   * so such a value is always out of bounds and callers treat -1 as such.
   */
  getOffset64(offset: number): number {
    this.#check(offset, 8);
    const hi = this.#view.getUint32(offset + 4, true);
    return hi === 0 ? this.#view.getUint32(offset, true) : -1;
  }

  /** Writes a le64 whose value fits in 32 bits (an offset or a small size). */
  setOffset64(offset: number, value: number): void {
    this.#check(offset, 8);
    this.#view.setUint32(offset, value >>> 0, true);
    this.#view.setUint32(offset + 4, 0, true);
  }

  /** Reads a full le64 as a bigint (feature words). */
  getU64(offset: number): bigint {
    this.#check(offset, 8);
    return this.#view.getBigUint64(offset, true);
  }

  /** Writes a full le64 (feature words). */
  setU64(offset: number, value: bigint): void {
    this.#check(offset, 8);
    this.#view.setBigUint64(offset, value, true);
  }

  /** Atomic (sequentially consistent) load of an aligned u16. */
  load16(offset: number): number {
    this.#checkAligned(offset, 2);
    return Atomics.load(this.#u16, offset >>> 1);
  }

  /** Atomic (sequentially consistent) store of an aligned u16. */
  store16(offset: number, value: number): void {
    this.#checkAligned(offset, 2);
    Atomics.store(this.#u16, offset >>> 1, value);
  }

  /** Atomic (sequentially consistent) load of an aligned u32. */
  load32(offset: number): number {
    this.#checkAligned(offset, 4);
    return Atomics.load(this.#u32, offset >>> 2);
  }

  /** Atomic (sequentially consistent) store of an aligned u32. */
  store32(offset: number, value: number): void {
    this.#checkAligned(offset, 4);
    Atomics.store(this.#u32, offset >>> 2, value);
  }

  /** Atomically adds to an aligned u32 and returns the previous value. */
  add32(offset: number, value: number): number {
    this.#checkAligned(offset, 4);
    return Atomics.add(this.#u32, offset >>> 2, value);
  }

  /**
   * A full memory fence: a locked read-modify-write of the word at `offset`
   * that leaves it unchanged (`lock cmpxchg` on x86-64, a store-release /
   * load-acquire pair on arm64). Needed between publishing our index and
   * reading the other side's event index. `offset` must be a word we own.
   */
  fence(offset: number): void {
    this.add32(offset, 0);
  }

  #borrowers = 0;

  /**
   * Records that another thread reads this memory (a waker worker), so that
   * the mapping is not removed under it. Pair with {@linkcode release}.
   */
  retain(): void {
    if (this.#closed) {
      throw new RegionAccessError("Cannot share region: it is closed");
    }
    this.#borrowers++;
  }

  /** Ends a {@linkcode retain}. */
  release(): void {
    if (this.#borrowers > 0) this.#borrowers--;
  }

  /** Threads other than this one that still read the memory. */
  get borrowers(): number {
    return this.#borrowers;
  }

  /** Whether {@linkcode Region.close} has run. */
  get closed(): boolean {
    return this.#closed;
  }

  /**
   * Detaches every view of the buffer so that no later access can reach the
   * memory (after a munmap it would fault). Later accesses throw
   * {@linkcode RegionAccessError}. Idempotent.
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#buffer instanceof SharedArrayBuffer) return; // GC-owned memory
    // Transferring the buffer detaches it and every view built on it; the
    // clone still points at the same memory, so it is dropped at once.
    const buffer = this.#buffer as ArrayBuffer;
    structuredClone(buffer, { transfer: [buffer] });
  }

  #check(offset: number, length: number): void {
    if (this.#closed) {
      throw new RegionAccessError("Cannot access region: it is closed");
    }
    // The comparisons are false for NaN and non-integers fail the last test,
    // so only whole in-range numbers pass.
    if (
      !(offset >= 0 && length >= 0 && offset + length <= this.size) ||
      (offset >>> 0) !== offset || (length >>> 0) !== length
    ) {
      throw new RegionAccessError(
        `Cannot access region: range [${offset}, +${length}) is outside [0, ${this.size})`,
      );
    }
  }

  #checkAligned(offset: number, width: number): void {
    this.#check(offset, width);
    if (offset % width !== 0) {
      throw new RegionAccessError(
        `Cannot access region: offset ${offset} is not ${width}-byte aligned`,
      );
    }
  }
}

/**
 * Checks a region size: a power of two in
 * [{@linkcode MIN_REGION_SIZE}, {@linkcode MAX_REGION_SIZE}].
 *
 * @throws {RangeError} naming the size received.
 */
export function checkRegionSize(size: number): void {
  if (
    !Number.isInteger(size) || size < MIN_REGION_SIZE ||
    size > MAX_REGION_SIZE || (size & (size - 1)) !== 0
  ) {
    throw new RangeError(
      `Region size must be a power of two from ${MIN_REGION_SIZE} to ${MAX_REGION_SIZE} bytes, received ${size}`,
    );
  }
}
