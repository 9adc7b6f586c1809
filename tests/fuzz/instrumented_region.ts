/**
 * A {@linkcode Region} that watches every access the device makes, for the
 * fuzz run only. The device is given this view of the shared memory; the
 * guest (the well-behaved driver and the hostile actor) uses a plain
 * `Region` over the same `SharedArrayBuffer`, so every access recorded here
 * is the device's own.
 *
 * It proves three things:
 * - no access is ever attempted outside the region: `Region` would refuse it
 *   with a `RegionAccessError`, and each such error is counted here (there
 *   must be none, because validation has to stop a bad offset before any
 *   access);
 * - every access lies in `[0, size)` (recorded as the lowest and highest
 *   byte touched);
 * - once armed, the device writes only where it may: the header words it
 *   owns (docs/transport.md, section 2.2), the used rings of its live
 *   queues, and the buffer pool it accepted (receive and event buffers).
 *   Anything else (a descriptor table, an available ring, a driver-owned
 *   header word) is recorded as a violation.
 *
 * @module
 */

import { Region, RegionAccessError } from "../../device/shm/region.ts";
import { H, REASON_LENGTH } from "../../device/transport/layout.ts";
import { splitRingBytes } from "../../device/virtqueue/split_ring.ts";
import type { ActiveQueues } from "../../device/transport/device_transport.ts";

/** Header byte ranges the device writes: `[start, end)`. */
const DEVICE_HEADER_WORDS: ReadonlyArray<readonly [number, number]> = [
  [H.MAGIC, H.DRIVER_FEATURES], // MAGIC .. DEVICE_FEATURES
  [H.DEVICE_STATUS, H.DRIVER_GENERATION], // DEVICE_STATUS .. DEVICE_HEARTBEAT
  [H.DEVICE_PEER, H.DEVICE_PEER + 4],
  [H.NOTIFY_MODE, H.NOTIFY_MODE + 4],
  [H.REASON, H.REASON + REASON_LENGTH],
];

/** Where the device may write right now: its live queues and their pool. */
export interface WriteScope {
  queues: ActiveQueues | null;
  /** The pool window the live queues were validated against. */
  pool: { start: number; end: number } | null;
}

/** What the instrumentation saw. */
export interface AccessReport {
  accesses: number;
  writes: number;
  /** `RegionAccessError`s thrown by an access (must be 0). */
  accessErrors: number;
  /** Lowest and highest byte offset touched (`-1` before any access). */
  lowest: number;
  highest: number;
  /** Writes outside the device's scope (must be empty); the first few. */
  violations: string[];
  violationCount: number;
}

const MAX_KEPT = 20;

/** The device's instrumented view of the shared region. */
export class InstrumentedRegion extends Region {
  #accesses = 0;
  #writes = 0;
  #errors = 0;
  #lowest = -1;
  #highest = -1;
  #violations: string[] = [];
  #violationCount = 0;
  #errorMessages: string[] = [];
  #scope: (() => WriteScope) | null = null;

  constructor(buffer: SharedArrayBuffer) {
    super(buffer);
  }

  /**
   * Starts checking writes against `scope` (called after the device has
   * initialised the header, which it owns entirely until MAGIC is set).
   */
  arm(scope: () => WriteScope): void {
    this.#scope = scope;
  }

  /** A snapshot of what was seen so far. */
  report(): AccessReport {
    return {
      accesses: this.#accesses,
      writes: this.#writes,
      accessErrors: this.#errors,
      lowest: this.#lowest,
      highest: this.#highest,
      violations: [...this.#violations, ...this.#errorMessages],
      violationCount: this.#violationCount,
    };
  }

  override span(offset: number, length: number): Uint8Array {
    // A span is a live view: DeviceTx reads payloads through one and
    // DeviceEvents writes an event through one, so it is checked as a write.
    return this.#do(offset, length, true, () => super.span(offset, length));
  }
  override write(offset: number, src: Uint8Array): void {
    this.#do(offset, src.length, true, () => super.write(offset, src));
  }
  override read(offset: number, dest: Uint8Array): void {
    this.#do(offset, dest.length, false, () => super.read(offset, dest));
  }
  override fill(offset: number, length: number, value = 0): void {
    this.#do(offset, length, true, () => super.fill(offset, length, value));
  }
  override getU8(offset: number): number {
    return this.#do(offset, 1, false, () => super.getU8(offset));
  }
  override setU8(offset: number, value: number): void {
    this.#do(offset, 1, true, () => super.setU8(offset, value));
  }
  override getU16(offset: number): number {
    return this.#do(offset, 2, false, () => super.getU16(offset));
  }
  override setU16(offset: number, value: number): void {
    this.#do(offset, 2, true, () => super.setU16(offset, value));
  }
  override getU32(offset: number): number {
    return this.#do(offset, 4, false, () => super.getU32(offset));
  }
  override setU32(offset: number, value: number): void {
    this.#do(offset, 4, true, () => super.setU32(offset, value));
  }
  override getOffset64(offset: number): number {
    return this.#do(offset, 8, false, () => super.getOffset64(offset));
  }
  override setOffset64(offset: number, value: number): void {
    this.#do(offset, 8, true, () => super.setOffset64(offset, value));
  }
  override getU64(offset: number): bigint {
    return this.#do(offset, 8, false, () => super.getU64(offset));
  }
  override setU64(offset: number, value: bigint): void {
    this.#do(offset, 8, true, () => super.setU64(offset, value));
  }
  override load16(offset: number): number {
    return this.#do(offset, 2, false, () => super.load16(offset));
  }
  override store16(offset: number, value: number): void {
    this.#do(offset, 2, true, () => super.store16(offset, value));
  }
  override load32(offset: number): number {
    return this.#do(offset, 4, false, () => super.load32(offset));
  }
  override store32(offset: number, value: number): void {
    this.#do(offset, 4, true, () => super.store32(offset, value));
  }
  override add32(offset: number, value: number): number {
    // fence() is add32(offset, 0): a locked write of an unchanged word, still
    // a store, so it must land on a word the device owns too.
    return this.#do(offset, 4, true, () => super.add32(offset, value));
  }

  #do<T>(offset: number, length: number, write: boolean, access: () => T): T {
    this.#accesses++;
    let result: T;
    try {
      result = access();
    } catch (err) {
      if (err instanceof RegionAccessError) {
        this.#errors++;
        if (this.#errorMessages.length < MAX_KEPT) {
          this.#errorMessages.push(`RegionAccessError: ${err.message}`);
        }
      }
      throw err;
    }
    // Only accesses the region allowed get here, so they are in bounds.
    if (length > 0) {
      if (this.#lowest < 0 || offset < this.#lowest) this.#lowest = offset;
      const last = offset + length - 1;
      if (last > this.#highest) this.#highest = last;
    }
    if (write) {
      this.#writes++;
      if (this.#scope !== null && length > 0) this.#checkWrite(offset, length);
    }
    return result;
  }

  #checkWrite(offset: number, length: number): void {
    const end = offset + length;
    for (const [s, e] of DEVICE_HEADER_WORDS) {
      if (offset >= s && end <= e) return;
    }
    const { queues, pool } = this.#scope!();
    if (queues !== null) {
      for (const q of [queues.rx, queues.tx, queues.event]) {
        const used = q.layout.used;
        if (
          offset >= used && end <= used + splitRingBytes(q.layout.size).used
        ) {
          return;
        }
      }
      if (pool !== null && offset >= pool.start && end <= pool.end) return;
    }
    this.#violationCount++;
    if (this.#violations.length < MAX_KEPT) {
      this.#violations.push(
        `device wrote [${offset}, +${length}) outside its header words, live used rings and pool (${
          queues === null ? "no live queues" : describe(queues, pool)
        })`,
      );
    }
  }
}

function describe(
  q: ActiveQueues,
  pool: { start: number; end: number } | null,
): string {
  const used = [q.rx, q.tx, q.event].map((x) => x.layout.used).join("/");
  return `used rings at ${used}, pool ${
    pool === null ? "unknown" : `[${pool.start}, ${pool.end})`
  }`;
}
