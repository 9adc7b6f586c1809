/**
 * The driver side of a split virtqueue: owns the descriptor table and the
 * available ring, posts buffers, publishes them, and harvests what the
 * device returns.
 *
 * The driver keeps its own shadow of every chain it posted (the next links,
 * the head's writable capacity), so a device that scribbles over the table or
 * returns a bogus used entry cannot make it free the wrong descriptors: such
 * a used entry marks the queue broken instead.
 *
 * @module
 */

import type { Region } from "../shm/region.ts";
import { AVAIL_F_NO_INTERRUPT, DESC_F, USED_F_NO_NOTIFY } from "../virtio.ts";
import { needEvent } from "./event_idx.ts";
import {
  AVAIL_FLAGS,
  AVAIL_IDX,
  AVAIL_RING,
  availEventOffset,
  DESC_ADDR,
  DESC_FLAGS,
  DESC_LEN,
  DESC_NEXT,
  DESC_SIZE,
  splitRingBytes,
  type SplitRingLayout,
  USED_ELEM_SIZE,
  USED_FLAGS,
  USED_IDX,
  USED_RING,
  usedEventOffset,
} from "./split_ring.ts";

/** How a driver queue behaves. */
export interface DriverQueueOptions {
  /** Name used in messages. */
  name: string;
  /** VIRTIO_F_RING_EVENT_IDX was negotiated. */
  eventIdx: boolean;
}

const NONE = 0xffff;

/** Driver role of a split virtqueue. */
export class DriverQueue {
  readonly region: Region;
  readonly layout: SplitRingLayout;
  readonly name: string;
  #eventIdx: boolean;
  /** Shadow of each descriptor's `next`, private to the driver. */
  #next: Uint16Array;
  /** Descriptors in the chain headed here, or 0 when it is not in flight. */
  #chainLength: Uint16Array;
  /** Writable bytes of the chain headed here. */
  #writable: Uint32Array;
  #freeHead = 0;
  #freeCount: number;
  #availShadow = 0;
  #availPublished = 0;
  #availKicked = 0;
  #lastUsed = 0;
  #broken: string | null = null;
  /** Length reported by the last {@linkcode nextUsed}. */
  usedLength = 0;

  /**
   * Resets the queue's rings in the region and builds the free list.
   */
  constructor(
    region: Region,
    layout: SplitRingLayout,
    options: DriverQueueOptions,
  ) {
    this.region = region;
    this.layout = layout;
    this.name = options.name;
    this.#eventIdx = options.eventIdx;
    const q = layout.size;
    this.#next = new Uint16Array(q);
    this.#chainLength = new Uint16Array(q);
    this.#writable = new Uint32Array(q);
    const bytes = splitRingBytes(q);
    region.fill(layout.desc, bytes.desc);
    region.fill(layout.avail, bytes.avail);
    region.fill(layout.used, bytes.used);
    for (let i = 0; i < q; i++) this.#next[i] = i + 1 < q ? i + 1 : NONE;
    this.#freeCount = q;
  }

  /** Why the queue stopped (the device returned something impossible). */
  get broken(): string | null {
    return this.#broken;
  }

  /** Descriptors not currently posted. */
  get freeCount(): number {
    return this.#freeCount;
  }

  /** Chains posted and not yet returned. */
  get inFlight(): number {
    return (this.#availShadow - this.#lastUsed) & 0xffff;
  }

  /**
   * Posts one buffer (a one-descriptor chain). Returns its head index, or -1
   * when no descriptor is free.
   */
  add(offset: number, length: number, writable: boolean): number {
    return this.addChain([offset], [length], writable ? 0 : 1);
  }

  /**
   * Posts a chain of buffers; the first `readable` are device-readable, the
   * rest device-writable. Returns the head index, or -1 when there are not
   * enough free descriptors.
   */
  addChain(
    offsets: ArrayLike<number>,
    lengths: ArrayLike<number>,
    readable: number,
  ): number {
    const n = offsets.length;
    if (n === 0 || n > this.#freeCount || this.#broken !== null) return -1;
    const head = this.#freeHead;
    let index = head;
    let writableBytes = 0;
    for (let i = 0; i < n; i++) {
      const at = this.layout.desc + index * DESC_SIZE;
      const writable = i >= readable;
      if (writable) writableBytes += lengths[i]!;
      this.region.setOffset64(at + DESC_ADDR, offsets[i]!);
      this.region.setU32(at + DESC_LEN, lengths[i]!);
      const last = i === n - 1;
      this.region.setU16(
        at + DESC_FLAGS,
        (last ? 0 : DESC_F.NEXT) | (writable ? DESC_F.WRITE : 0),
      );
      const next = this.#next[index]!;
      this.region.setU16(at + DESC_NEXT, last ? 0 : next);
      if (last) this.#freeHead = next;
      else index = next;
    }
    this.#freeCount -= n;
    this.#chainLength[head] = n;
    this.#writable[head] = writableBytes;
    const slot = this.#availShadow % this.layout.size;
    this.region.setU16(this.layout.avail + AVAIL_RING + 2 * slot, head);
    this.#availShadow = (this.#availShadow + 1) & 0xffff;
    return head;
  }

  /**
   * Makes every added chain visible to the device (release store of the
   * available index) and returns whether the device wants a notification.
   */
  publish(): boolean {
    if (this.#availShadow === this.#availPublished) return false;
    this.region.store16(this.layout.avail + AVAIL_IDX, this.#availShadow);
    this.#availPublished = this.#availShadow;
    return this.#kickNeeded();
  }

  /**
   * Harvests the next used entry: returns the head index and sets
   * {@linkcode usedLength}, or returns -1 when there is none or the queue is
   * broken. The chain's descriptors are free again on return.
   */
  nextUsed(): number {
    if (this.#broken !== null) return -1;
    const usedIdx = this.region.load16(this.layout.used + USED_IDX);
    if (usedIdx === this.#lastUsed) return -1;
    const published = (this.#availPublished - this.#lastUsed) & 0xffff;
    if (((usedIdx - this.#lastUsed) & 0xffff) > published) {
      this.#fail(
        `used index moved from ${this.#lastUsed} to ${usedIdx} with only ${published} chains published`,
      );
      return -1;
    }
    const slot = this.#lastUsed % this.layout.size;
    const at = this.layout.used + USED_RING + USED_ELEM_SIZE * slot;
    const head = this.region.getU32(at);
    const len = this.region.getU32(at + 4);
    if (head >= this.layout.size || this.#chainLength[head] === 0) {
      this.#fail(
        `used entry ${this.#lastUsed} names head ${head}, which is not in flight`,
      );
      return -1;
    }
    if (len > this.#writable[head]!) {
      this.#fail(
        `used entry for head ${head} claims ${len} bytes written into ${
          this.#writable[head]
        } writable bytes`,
      );
      return -1;
    }
    this.#lastUsed = (this.#lastUsed + 1) & 0xffff;
    this.#release(head);
    this.usedLength = len;
    return head;
  }

  /** Whether a used entry is waiting (a cheap check, no harvesting). */
  hasUsed(): boolean {
    return this.region.load16(this.layout.used + USED_IDX) !== this.#lastUsed;
  }

  /**
   * Asks the device to notify on the next used entry, then re-checks:
   * returns true when entries arrived meanwhile.
   */
  enableCallbacks(): boolean {
    if (this.#eventIdx) {
      this.region.store16(
        this.layout.avail + usedEventOffset(this.layout.size),
        this.#lastUsed,
      );
    } else {
      this.region.store16(this.layout.avail + AVAIL_FLAGS, 0);
    }
    this.#fence();
    return this.hasUsed();
  }

  /** Tells the device notifications are not needed (a hint with EVENT_IDX). */
  disableCallbacks(): void {
    if (!this.#eventIdx) {
      this.region.store16(
        this.layout.avail + AVAIL_FLAGS,
        AVAIL_F_NO_INTERRUPT,
      );
    }
  }

  #kickNeeded(): boolean {
    const oldIdx = this.#availKicked;
    const newIdx = this.#availPublished;
    this.#availKicked = newIdx;
    // Store (avail idx) -> load (avail_event / used flags) needs a full fence.
    this.#fence();
    if (this.#eventIdx) {
      const availEvent = this.region.load16(
        this.layout.used + availEventOffset(this.layout.size),
      );
      return needEvent(availEvent, newIdx, oldIdx);
    }
    return (this.region.load16(this.layout.used + USED_FLAGS) &
      USED_F_NO_NOTIFY) === 0;
  }

  #release(head: number): void {
    let n = this.#chainLength[head]!;
    this.#chainLength[head] = 0;
    this.#freeCount += n;
    // Walk our own shadow links, never the shared table.
    let last = head;
    while (--n > 0) last = this.#next[last]!;
    this.#next[last] = this.#freeHead;
    this.#freeHead = head;
  }

  // A locked read-modify-write that changes nothing, on the aligned word
  // holding the available ring's flags: that word (or, when the ring is only
  // 2-aligned, the last two bytes of the descriptor table with it) is written
  // only by the driver, so no concurrent update can be lost.
  #fence(): void {
    this.region.fence((this.layout.avail + AVAIL_FLAGS) & ~3);
  }

  #fail(reason: string): void {
    this.#broken = `${this.name} queue: ${reason}`;
  }
}
