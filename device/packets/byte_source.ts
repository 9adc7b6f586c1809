/**
 * A source of stream bytes that a packet sink reads straight into the
 * buffers of the packets it is about to send: a socket, for the data plane.
 * Pulling saves the copy from a read buffer into the ring, which was
 * 12-14% of the busy side's time in bulk transfer (docs/performance.md).
 *
 * @module
 */

import type { Region } from "../shm/region.ts";
import type { SegmentList } from "../virtqueue/segments.ts";

/** Bytes a sink can pull into region memory. */
export interface ByteSource {
  /**
   * Reads into the ranges of `dest` (in `region`), front to back. Returns
   * the bytes read, at most `dest.bytes`; 0 when none are ready now (the
   * source tells its owner again when there may be); null at the end of
   * the input.
   *
   * @throws when the source failed (a reset socket).
   */
  fill(region: Region, dest: SegmentList): number | null;
}

/**
 * Payload bytes one pull asks for, what one socket read took before: the
 * sinks plan whole packets until they reach it, so a pull may ask for up to
 * one packet more.
 */
export const FILL_BYTES = 256 * 1024;

/** Most packets one pull spreads over (64 one-buffer 4 KiB packets). */
export const FILL_PACKETS = 64;

/**
 * What a sink throws when its source failed (a reset socket, or a count it
 * could not have read): the source's error is `cause`. Anything else a sink
 * throws is a bug of ours, not the source's.
 */
export class SourceFailure extends Error {
  constructor(cause: unknown) {
    super("the byte source failed", { cause });
    this.name = "SourceFailure";
  }
}

/**
 * Calls `source.fill(region, dest)` and checks its count: a source that
 * claimed more than it had room for would make the sink publish bytes it
 * never wrote.
 *
 * @throws {SourceFailure} when the source throws or returns a count that
 * is not an integer in `[0, dest.bytes]` or null.
 */
export function fillFrom(
  source: ByteSource,
  region: Region,
  dest: SegmentList,
): number | null {
  let n: number | null;
  try {
    n = source.fill(region, dest);
  } catch (err) {
    throw new SourceFailure(err);
  }
  if (n === null) return null;
  if (!Number.isInteger(n) || n < 0 || n > dest.bytes) {
    throw new SourceFailure(
      new RangeError(
        `a byte source returned ${n} for ${dest.bytes} bytes of room`,
      ),
    );
  }
  return n;
}
