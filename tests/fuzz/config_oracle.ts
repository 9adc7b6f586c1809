/**
 * An independent check of every queue configuration the device accepts:
 * written from docs/transport.md, section 4.5, not from the device's code,
 * so a check the device forgets shows up as an accepted configuration that
 * breaks a rule.
 *
 * @module
 */

import type { ActiveQueues } from "../../device/transport/device_transport.ts";
import { HEADER_SIZE } from "../../device/transport/layout.ts";

/** What is wrong with an accepted configuration, or `null`. */
export function checkAccepted(
  queues: ActiveQueues,
  pool: { start: number; end: number },
  regionSize: number,
  maxQueueSize: number,
): string | null {
  if (
    !(pool.end > pool.start && pool.start >= HEADER_SIZE &&
      pool.end <= regionSize)
  ) {
    return `pool [${pool.start}, ${pool.end}) is empty, below the header or past the region`;
  }
  const parts: Array<{ name: string; at: number; len: number }> = [];
  for (const q of [queues.rx, queues.tx, queues.event]) {
    const n = q.layout.size;
    if (!(n >= 1 && n <= maxQueueSize && (n & (n - 1)) === 0)) {
      return `${q.name} queue size ${n} is not a power of two up to ${maxQueueSize}`;
    }
    const own = [
      { name: `${q.name} desc`, at: q.layout.desc, len: 16 * n, align: 16 },
      { name: `${q.name} avail`, at: q.layout.avail, len: 6 + 2 * n, align: 2 },
      { name: `${q.name} used`, at: q.layout.used, len: 6 + 8 * n, align: 4 },
    ];
    for (const p of own) {
      if (!(p.at >= HEADER_SIZE && p.at + p.len <= regionSize)) {
        return `${p.name} [${p.at}, +${p.len}) is not between the header and the end of the region`;
      }
      if (p.at % p.align !== 0) return `${p.name} at ${p.at} is misaligned`;
      if (p.at < pool.end && pool.start < p.at + p.len) {
        return `${p.name} [${p.at}, +${p.len}) overlaps the pool`;
      }
      for (const o of parts) {
        if (p.at < o.at + o.len && o.at < p.at + p.len) {
          return `${p.name} [${p.at}, +${p.len}) overlaps ${o.name}`;
        }
      }
      parts.push(p);
    }
  }
  return null;
}
