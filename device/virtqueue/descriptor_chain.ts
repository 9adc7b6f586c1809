/**
 * Walking and validating one descriptor chain the driver made available
 * (device role). This is the boundary where untrusted descriptor tables
 * become checked (offset, length) ranges; code after it never re-reads the
 * table.
 *
 * Rules enforced (virtio 1.3, 2.7.5 and 2.7.5.3):
 * - a chain visits at most `queueSize` descriptors, which also ends any loop;
 * - every `next` index lies inside the table being walked;
 * - every buffer lies inside the allowed window of the region;
 * - readable descriptors come before writable ones, and the queue's
 *   direction is respected (tx chains read-only, rx chains write-only);
 * - INDIRECT only when negotiated, never with NEXT, never nested, a table
 *   whose length is a non-zero multiple of 16 and holds at most
 *   `queueSize` descriptors, inside the window;
 * - the chain's total length stays below 2^32 bytes.
 *
 * @module
 */

import type { Region } from "../shm/region.ts";
import { DESC_F, MAX_CHAIN_BYTES } from "../virtio.ts";
import {
  DESC_ADDR,
  DESC_FLAGS,
  DESC_LEN,
  DESC_NEXT,
  DESC_SIZE,
} from "./split_ring.ts";
import type { SegmentList } from "./segments.ts";

/** Which way a queue's buffers go, seen from the device. */
export type QueueDirection = "device-reads" | "device-writes";

/** Where buffers may live and what a chain may use. */
export interface ChainRules {
  queueSize: number;
  /** Offset of the descriptor table. */
  descTable: number;
  direction: QueueDirection;
  /** VIRTIO_F_RING_INDIRECT_DESC was negotiated. */
  indirect: boolean;
  /** Buffers (and indirect tables) must lie in `[windowStart, windowEnd)`. */
  windowStart: number;
  windowEnd: number;
}

/**
 * Walks the chain starting at `head` and appends its buffers to `out` (the
 * readable ones for a device-reads queue, the writable ones otherwise).
 * Returns `null` when the chain is valid, or the reason it is not; on
 * failure `out` is restored to its length on entry.
 *
 * `head` must already be checked to be below `rules.queueSize`.
 */
export function readChain(
  region: Region,
  rules: ChainRules,
  head: number,
  out: SegmentList,
): string | null {
  const startCount = out.count;
  const reason = walk(region, rules, head, out);
  if (reason !== null) out.truncate(startCount);
  return reason;
}

function walk(
  region: Region,
  rules: ChainRules,
  head: number,
  out: SegmentList,
): string | null {
  const wantWrite = rules.direction === "device-writes";
  let table = rules.descTable;
  let tableSize = rules.queueSize;
  let inIndirect = false;
  let index = head;
  let visited = 0;
  let total = 0;
  let seenWritable = false;

  for (;;) {
    if (++visited > rules.queueSize) {
      return `descriptor chain from head ${head} is longer than the queue size ${rules.queueSize} or loops`;
    }
    const at = table + index * DESC_SIZE;
    const addr = region.getOffset64(at + DESC_ADDR);
    const len = region.getU32(at + DESC_LEN);
    const flags = region.getU16(at + DESC_FLAGS);
    const next = region.getU16(at + DESC_NEXT);

    if (flags & DESC_F.INDIRECT) {
      if (!rules.indirect) {
        return `descriptor ${index} is INDIRECT but indirect descriptors were not negotiated`;
      }
      if (inIndirect) {
        return `descriptor ${index} in an indirect table is itself INDIRECT (nesting is forbidden)`;
      }
      if (flags & DESC_F.NEXT) {
        return `descriptor ${index} has both INDIRECT and NEXT`;
      }
      if (len === 0 || len % DESC_SIZE !== 0) {
        return `indirect table length ${len} is not a non-zero multiple of ${DESC_SIZE}`;
      }
      if (len / DESC_SIZE > rules.queueSize) {
        return `indirect table of ${
          len / DESC_SIZE
        } descriptors exceeds the queue size ${rules.queueSize}`;
      }
      if (!inWindow(rules, addr, len)) {
        return `indirect table at ${addr} (+${len}) is outside the buffer area`;
      }
      // The walk restarts inside the table; its entries count towards the
      // chain length (the descriptor pointing at it does not: it is no
      // buffer), so a table cannot extend a chain past the queue size.
      visited--;
      table = addr;
      tableSize = len / DESC_SIZE;
      inIndirect = true;
      index = 0;
      continue;
    }

    if (!inWindow(rules, addr, len)) {
      return `descriptor ${index} buffer at ${
        addr < 0 ? ">= 2^32" : addr
      } (+${len}) is outside the buffer area`;
    }
    const writable = (flags & DESC_F.WRITE) !== 0;
    if (writable) {
      seenWritable = true;
    } else if (seenWritable) {
      return `descriptor ${index} is readable after a writable one`;
    }
    if (writable !== wantWrite) {
      return wantWrite
        ? `descriptor ${index} is device-readable in a queue the device only writes`
        : `descriptor ${index} is device-writable in a queue the device only reads`;
    }
    total += len;
    if (total >= MAX_CHAIN_BYTES) {
      return `descriptor chain from head ${head} is 2^32 bytes or longer`;
    }
    out.push(addr, len);

    if (!(flags & DESC_F.NEXT)) return null;
    if (next >= tableSize) {
      return `descriptor ${index} points to next ${next}, outside a table of ${tableSize}`;
    }
    index = next;
  }
}

function inWindow(rules: ChainRules, addr: number, len: number): boolean {
  return addr >= rules.windowStart && addr + len <= rules.windowEnd;
}
