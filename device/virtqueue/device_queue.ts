/**
 * The device side of a split virtqueue: takes the chains the driver made
 * available, validates them, and returns them through the used ring.
 *
 * A malformed chain is returned unused (used length 0) and reported through
 * `onDrop`; the queue keeps working. A corrupt ring (the available index
 * jumping ahead by more than the queue size, or a head index outside the
 * table) cannot be recovered from without a reset: the queue stops and
 * `broken` says why, and the transport then marks the device NEEDS_RESET.
 *
 * Memory ordering: see `docs/memory-ordering.md`. In short, the available
 * index is read with an atomic load before the ring and descriptors are read,
 * used entries are written before an atomic store of the used index, and a
 * full fence separates publishing our index from reading the driver's event
 * index or flags.
 *
 * @module
 */

import type { Region } from "../shm/region.ts";
import { AVAIL_F_NO_INTERRUPT, USED_F_NO_NOTIFY } from "../virtio.ts";
import {
  type ChainRules,
  type QueueDirection,
  readChain,
} from "./descriptor_chain.ts";
import { needEvent } from "./event_idx.ts";
import type { SegmentList } from "./segments.ts";
import {
  AVAIL_FLAGS,
  AVAIL_IDX,
  AVAIL_RING,
  availEventOffset,
  type SplitRingLayout,
  USED_ELEM_SIZE,
  USED_FLAGS,
  USED_IDX,
  USED_RING,
  usedEventOffset,
} from "./split_ring.ts";

/** How a device queue behaves. */
export interface DeviceQueueOptions {
  /** Name used in messages (`"tx"`, `"rx"`). */
  name: string;
  direction: QueueDirection;
  /** VIRTIO_F_RING_EVENT_IDX was negotiated. */
  eventIdx: boolean;
  /** VIRTIO_F_RING_INDIRECT_DESC was negotiated. */
  indirect: boolean;
  /** Where buffers may live; defaults to the whole region. */
  window?: { start: number; end: number };
  /** Called with the reason whenever a malformed chain is dropped. */
  onDrop?: (reason: string) => void;
}

/** Counters for observability. */
export interface DeviceQueueStats {
  popped: number;
  dropped: number;
  used: number;
  notifications: number;
}

/** Device role of a split virtqueue. */
export class DeviceQueue {
  readonly region: Region;
  readonly layout: SplitRingLayout;
  readonly name: string;
  readonly stats: DeviceQueueStats = {
    popped: 0,
    dropped: 0,
    used: 0,
    notifications: 0,
  };
  #rules: ChainRules;
  #eventIdx: boolean;
  #onDrop: (reason: string) => void;
  #lastAvail = 0;
  /** Used index including entries not yet published. */
  #usedShadow = 0;
  /** Used index the driver can see. */
  #usedPublished = 0;
  /** Used index at the last notification decision. */
  #usedSignalled = 0;
  #broken: string | null = null;

  constructor(
    region: Region,
    layout: SplitRingLayout,
    options: DeviceQueueOptions,
  ) {
    this.region = region;
    this.layout = layout;
    this.name = options.name;
    this.#eventIdx = options.eventIdx;
    this.#onDrop = options.onDrop ?? (() => {});
    this.#rules = {
      queueSize: layout.size,
      descTable: layout.desc,
      direction: options.direction,
      indirect: options.indirect,
      windowStart: options.window?.start ?? 0,
      windowEnd: options.window?.end ?? region.size,
    };
    // The driver zeroes both indices when it sets a queue up; starting from
    // the used index in the ring keeps the two sides in step either way.
    this.#usedShadow = this.#usedPublished = this.#usedSignalled = region
      .load16(layout.used + USED_IDX);
    this.#lastAvail = this.#usedShadow;
  }

  /** Why the queue stopped, or `null` while it works. */
  get broken(): string | null {
    return this.#broken;
  }

  /** The next available index the device will take. */
  get lastAvail(): number {
    return this.#lastAvail;
  }

  /**
   * Number of chains the driver has made available and the device has not
   * taken yet. Marks the queue broken if the index jumped too far.
   */
  pending(): number {
    if (this.#broken !== null) return 0;
    const availIdx = this.region.load16(this.layout.avail + AVAIL_IDX);
    const n = (availIdx - this.#lastAvail) & 0xffff;
    if (n > this.layout.size) {
      this.#fail(
        `available index moved from ${this.#lastAvail} to ${availIdx}, more than the queue size ${this.layout.size}`,
      );
      return 0;
    }
    return n;
  }

  /**
   * Takes the next valid chain and appends its buffers to `out`. Malformed
   * chains met on the way are returned with length 0 and skipped. Returns the
   * head index, or -1 when nothing (valid) is available or the queue broke.
   */
  pop(out: SegmentList): number {
    for (;;) {
      if (this.pending() === 0) return -1;
      const slot = this.#lastAvail % this.layout.size;
      const head = this.region.getU16(
        this.layout.avail + AVAIL_RING + 2 * slot,
      );
      if (head >= this.layout.size) {
        this.#fail(
          `available ring entry ${this.#lastAvail} names head ${head}, outside a queue of ${this.layout.size}`,
        );
        return -1;
      }
      this.#lastAvail = (this.#lastAvail + 1) & 0xffff;
      const reason = readChain(this.region, this.#rules, head, out);
      if (reason === null) {
        this.stats.popped++;
        return head;
      }
      this.stats.dropped++;
      this.#onDrop(`${this.name} queue: dropped a chain: ${reason}`);
      // Hand the buffer straight back so the driver can reuse it. Only whole
      // packets are ever pushed between publishes, so this publishes nothing
      // half-written.
      this.push(head, 0);
      this.publish();
    }
  }

  /** Queues a used entry; the driver sees it after {@linkcode publish}. */
  push(head: number, writtenBytes: number): void {
    const slot = this.#usedShadow % this.layout.size;
    const at = this.layout.used + USED_RING + USED_ELEM_SIZE * slot;
    this.region.setU32(at, head);
    this.region.setU32(at + 4, writtenBytes);
    this.#usedShadow = (this.#usedShadow + 1) & 0xffff;
    this.stats.used++;
  }

  /** Makes every pushed entry visible to the driver (release store). */
  publish(): void {
    if (this.#usedShadow === this.#usedPublished) return;
    this.region.store16(this.layout.used + USED_IDX, this.#usedShadow);
    this.#usedPublished = this.#usedShadow;
  }

  /**
   * Whether the driver asked to be notified about the entries published
   * since the last call (EVENT_IDX `used_event`, or the NO_INTERRUPT hint).
   */
  shouldNotify(): boolean {
    const oldIdx = this.#usedSignalled;
    const newIdx = this.#usedPublished;
    if (oldIdx === newIdx) return false;
    this.#usedSignalled = newIdx;
    // Store (used idx) -> load (used_event) needs a full fence.
    this.#fence();
    let notify: boolean;
    if (this.#eventIdx) {
      const usedEvent = this.region.load16(
        this.layout.avail + usedEventOffset(this.layout.size),
      );
      notify = needEvent(usedEvent, newIdx, oldIdx);
    } else {
      notify = (this.region.load16(this.layout.avail + AVAIL_FLAGS) &
        AVAIL_F_NO_INTERRUPT) === 0;
    }
    if (notify) this.stats.notifications++;
    return notify;
  }

  /**
   * Asks the driver to notify the device when it makes buffers available,
   * then re-checks: returns true when buffers arrived meanwhile (the caller
   * should keep processing instead of sleeping).
   */
  enableNotifications(): boolean {
    if (this.#eventIdx) {
      this.region.store16(
        this.layout.used + availEventOffset(this.layout.size),
        this.#lastAvail,
      );
    } else {
      this.region.store16(this.layout.used + USED_FLAGS, 0);
    }
    // Store (avail_event) -> load (avail idx) needs a full fence.
    this.#fence();
    return this.pending() > 0;
  }

  /** Tells the driver notifications are not needed (only a hint with EVENT_IDX). */
  disableNotifications(): void {
    if (!this.#eventIdx) {
      this.region.store16(this.layout.used + USED_FLAGS, USED_F_NO_NOTIFY);
    }
  }

  // A locked read-modify-write that changes nothing, on the used ring's
  // flags/idx word: only the device writes that word, so it is safe to use.
  #fence(): void {
    this.region.fence(this.layout.used + USED_FLAGS);
  }

  #fail(reason: string): void {
    this.#broken = `${this.name} queue: ${reason}`;
  }
}
