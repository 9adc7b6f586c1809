/**
 * Exact accounting of the chains the device must drop on one queue: the
 * hostile actor records the ring position of every chain it spoiled, and
 * once the device has taken a position, its queue's drop counter must have
 * grown by exactly the number of spoiled positions taken. Fewer means the
 * device accepted a chain that breaks a rule; more means it dropped a good
 * one.
 *
 * @module
 */

import type { DeviceQueue } from "../../device/virtqueue/device_queue.ts";

/** Drop accounting for one device queue object. */
export class DropLedger {
  #queue: DeviceQueue | null = null;
  #base = 0;
  #taken = 0;
  #positions = new Set<number>();

  /** Starts over on `queue` (a new activation makes new queues). */
  track(queue: DeviceQueue | null): void {
    if (queue === this.#queue) return;
    this.#queue = queue;
    this.#base = queue?.stats.dropped ?? 0;
    this.#taken = 0;
    this.#positions.clear();
  }

  /** Forgets everything (after a transport-level episode). */
  clear(): void {
    this.#queue = null;
    this.#positions.clear();
  }

  /**
   * The chain at ring position `position` of `queue` must be dropped (a
   * position spoiled twice is still one chain).
   */
  expect(queue: DeviceQueue, position: number): void {
    this.track(queue);
    this.#positions.add(position & 0xffff);
  }

  /** Returns what is wrong, or `null`. */
  check(): string | null {
    const q = this.#queue;
    if (q === null) return null;
    const last = q.lastAvail;
    for (const p of this.#positions) {
      if (taken(last, p)) {
        this.#taken++;
        this.#positions.delete(p);
      }
    }
    const dropped = q.stats.dropped - this.#base;
    if (dropped !== this.#taken) {
      return `${q.name} queue dropped ${dropped} chains, but ${this.#taken} of the chains it took were spoiled`;
    }
    return null;
  }
}

/**
 * Whether ring position `position` is taken once the device's next one is
 * `lastAvail`: it has moved past it (free-running u16s; the actor only
 * spoils positions less than a queue ahead).
 */
export function taken(lastAvail: number, position: number): boolean {
  return ((lastAvail - position - 1) & 0xffff) < 0x8000;
}
