/**
 * Where the three parts of a split virtqueue sit in the region, and the
 * offsets of their fields (virtio 1.3, 2.7).
 *
 * ```text
 * descriptor table  16 * Q bytes, 16-aligned   addr le64, len le32, flags le16, next le16
 * available ring    6 + 2 * Q,     2-aligned   flags, idx, ring[Q] le16, used_event
 * used ring         6 + 8 * Q,     4-aligned   flags, idx, ring[Q] {id le32, len le32}, avail_event
 * ```
 *
 * @module
 */

import { MAX_QUEUE_SIZE } from "../virtio.ts";

/** Offsets (into the region) of one split queue's parts. */
export interface SplitRingLayout {
  /** Number of descriptors: a power of two from 1 to 32768. */
  readonly size: number;
  readonly desc: number;
  readonly avail: number;
  readonly used: number;
}

export const DESC_SIZE = 16;
export const DESC_ADDR = 0;
export const DESC_LEN = 8;
export const DESC_FLAGS = 12;
export const DESC_NEXT = 14;

export const AVAIL_FLAGS = 0;
export const AVAIL_IDX = 2;
export const AVAIL_RING = 4;

export const USED_FLAGS = 0;
export const USED_IDX = 2;
export const USED_RING = 4;
export const USED_ELEM_SIZE = 8;

/** Bytes taken by each part of a queue of `size` descriptors. */
export function splitRingBytes(
  size: number,
): { desc: number; avail: number; used: number } {
  return { desc: 16 * size, avail: 6 + 2 * size, used: 6 + 8 * size };
}

/** Offset of `used_event` inside the available ring. */
export function usedEventOffset(size: number): number {
  return AVAIL_RING + 2 * size;
}

/** Offset of `avail_event` inside the used ring. */
export function availEventOffset(size: number): number {
  return USED_RING + USED_ELEM_SIZE * size;
}

/** Whether `size` is a valid split queue size. */
export function isValidQueueSize(size: number): boolean {
  return Number.isInteger(size) && size >= 1 && size <= MAX_QUEUE_SIZE &&
    (size & (size - 1)) === 0;
}

/**
 * Places a queue's three parts one after another from `base`, each at its
 * alignment, and returns the layout and the first free offset after it.
 */
export function packSplitRing(
  base: number,
  size: number,
): { layout: SplitRingLayout; end: number } {
  const bytes = splitRingBytes(size);
  const desc = alignUp(base, 16);
  const avail = alignUp(desc + bytes.desc, 2);
  const used = alignUp(avail + bytes.avail, 4);
  return { layout: { size, desc, avail, used }, end: used + bytes.used };
}

/**
 * Checks a layout the other side proposed: a valid size, each part aligned
 * and inside `[0, regionSize)`, and no two parts overlapping. Returns the
 * reason it is unusable, or `null` when it is fine.
 */
export function checkSplitRing(
  layout: SplitRingLayout,
  regionSize: number,
): string | null {
  if (!isValidQueueSize(layout.size)) {
    return `queue size ${layout.size} is not a power of two from 1 to ${MAX_QUEUE_SIZE}`;
  }
  const bytes = splitRingBytes(layout.size);
  const parts = [
    { name: "descriptor table", at: layout.desc, len: bytes.desc, align: 16 },
    { name: "available ring", at: layout.avail, len: bytes.avail, align: 2 },
    { name: "used ring", at: layout.used, len: bytes.used, align: 4 },
  ];
  for (const p of parts) {
    if (!Number.isInteger(p.at) || p.at < 0 || p.at + p.len > regionSize) {
      return `${p.name} at ${p.at} (+${p.len}) is outside the region of ${regionSize} bytes`;
    }
    if (p.at % p.align !== 0) {
      return `${p.name} at ${p.at} is not ${p.align}-byte aligned`;
    }
  }
  for (let i = 0; i < parts.length; i++) {
    for (let j = i + 1; j < parts.length; j++) {
      const a = parts[i]!, b = parts[j]!;
      if (overlaps(a.at, a.len, b.at, b.len)) {
        return `${a.name} overlaps the ${b.name}`;
      }
    }
  }
  return null;
}

/** Whether `[a, a + alen)` and `[b, b + blen)` intersect. */
export function overlaps(
  a: number,
  alen: number,
  b: number,
  blen: number,
): boolean {
  return a < b + blen && b < a + alen;
}

/** Rounds `n` up to a multiple of `align` (a power of two). */
export function alignUp(n: number, align: number): number {
  return Math.ceil(n / align) * align;
}
