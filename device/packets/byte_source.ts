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
 * The byte count a source returned, checked: a source that claims more
 * than it was given room for would make the sink publish bytes it never
 * wrote.
 *
 * @throws {RangeError} if `n` is not an integer in `[0, room]` or null.
 */
export function checkedFill(n: number | null, room: number): number | null {
  if (n === null) return null;
  if (!Number.isInteger(n) || n < 0 || n > room) {
    throw new RangeError(
      `a byte source returned ${n} for ${room} bytes of room`,
    );
  }
  return n;
}
