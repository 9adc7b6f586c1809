/**
 * Writes descriptor tables and ring indices by hand, the way a hostile or
 * buggy driver (or device) could, for tests of the validation paths.
 *
 * @module
 */

import type { Region } from "../../device/shm/region.ts";
import {
  AVAIL_IDX,
  AVAIL_RING,
  DESC_SIZE,
  packSplitRing,
  type SplitRingLayout,
  USED_IDX,
  USED_RING,
} from "../../device/virtqueue/split_ring.ts";
import {
  DeviceQueue,
  type DeviceQueueOptions,
} from "../../device/virtqueue/device_queue.ts";
import { Region as RegionClass } from "../../device/shm/region.ts";
import { SegmentList } from "../../device/virtqueue/segments.ts";

export { DESC_F } from "../../device/virtio.ts";

/** One raw descriptor. */
export interface RawDesc {
  addr: number | bigint;
  len: number;
  flags?: number;
  next?: number;
}

/** Writes `d` as descriptor `index` of the table at `table`. */
export function writeDesc(
  region: Region,
  table: number,
  index: number,
  d: RawDesc,
): void {
  const at = table + index * DESC_SIZE;
  region.setU64(at, BigInt(d.addr));
  region.setU32(at + 8, d.len);
  region.setU16(at + 12, d.flags ?? 0);
  region.setU16(at + 14, d.next ?? 0);
}

/** A driver that writes whatever it is told into the rings. */
export class RawDriver {
  readonly region: Region;
  readonly layout: SplitRingLayout;
  availIdx = 0;

  constructor(region: Region, layout: SplitRingLayout) {
    this.region = region;
    this.layout = layout;
  }

  desc(index: number, d: RawDesc): void {
    writeDesc(this.region, this.layout.desc, index, d);
  }

  /** Puts `heads` on the available ring and publishes them. */
  offer(...heads: number[]): void {
    for (const h of heads) {
      const slot = this.availIdx % this.layout.size;
      this.region.setU16(this.layout.avail + AVAIL_RING + 2 * slot, h);
      this.availIdx = (this.availIdx + 1) & 0xffff;
    }
    this.region.store16(this.layout.avail + AVAIL_IDX, this.availIdx);
  }

  /** Sets the available index to anything at all. */
  setAvailIdx(idx: number): void {
    this.availIdx = idx & 0xffff;
    this.region.store16(this.layout.avail + AVAIL_IDX, this.availIdx);
  }

  usedIdx(): number {
    return this.region.load16(this.layout.used + USED_IDX);
  }

  /** The used entry at ring position `n` (free-running). */
  used(n: number): { id: number; len: number } {
    const at = this.layout.used + USED_RING + 8 * (n % this.layout.size);
    return { id: this.region.getU32(at), len: this.region.getU32(at + 4) };
  }
}

/** A region with one queue at offset 0 and buffers from `bufferStart`. */
export interface RawQueue {
  region: Region;
  driver: RawDriver;
  device: DeviceQueue;
  drops: string[];
  bufferStart: number;
  segments: SegmentList;
}

/** Sets up one device queue over a fresh region, with a raw driver. */
export function rawQueue(
  size: number,
  options: Partial<DeviceQueueOptions> & { regionSize?: number } = {},
): RawQueue {
  const region = RegionClass.alloc(options.regionSize ?? 1 << 20);
  const { layout, end } = packSplitRing(0, size);
  const bufferStart = Math.ceil(end / 4096) * 4096;
  const drops: string[] = [];
  const device = new DeviceQueue(region, layout, {
    name: options.name ?? "tx",
    direction: options.direction ?? "device-reads",
    eventIdx: options.eventIdx ?? false,
    indirect: options.indirect ?? false,
    window: options.window ?? { start: bufferStart, end: region.size },
    onDrop: (r) => drops.push(r),
  });
  return {
    region,
    driver: new RawDriver(region, layout),
    device,
    drops,
    bufferStart,
    segments: new SegmentList(),
  };
}
