/**
 * The vsock event queue (virtio 1.3, 5.10.6.6): the device writes
 * `struct virtio_vsock_event { le32 id; }` into buffers the driver posts.
 * The only event is TRANSPORT_RESET (id 0).
 *
 * @module
 */

import type { DeviceQueue } from "../virtqueue/device_queue.ts";
import type { DriverQueue } from "../virtqueue/driver_queue.ts";
import { SegmentList } from "../virtqueue/segments.ts";

/** `struct virtio_vsock_event` is one le32. */
export const EVENT_SIZE = 4;

/** Event ids. */
export const EVENT_ID = {
  TRANSPORT_RESET: 0,
} as const;

/** Device role: sends events, holding them until the driver posts buffers. */
export class DeviceEvents {
  readonly queue: DeviceQueue;
  #pending: number[] = [];
  #segments = new SegmentList();
  #bytes = new Uint8Array(EVENT_SIZE);
  #onDrop: (reason: string) => void;

  constructor(queue: DeviceQueue, onDrop: (reason: string) => void = () => {}) {
    this.queue = queue;
    this.#onDrop = onDrop;
  }

  /** Events not yet delivered. */
  get pending(): number {
    return this.#pending.length;
  }

  /** Queues an event; {@linkcode flush} delivers it. */
  send(id: number): void {
    // Repeating an event the driver has not seen yet tells it nothing new.
    if (!this.#pending.includes(id)) this.#pending.push(id);
  }

  /** Delivers pending events into posted buffers; returns how many. */
  flush(): number {
    let n = 0;
    while (this.#pending.length > 0) {
      this.#segments.clear();
      const head = this.queue.pop(this.#segments);
      if (head < 0) break;
      if (this.#segments.bytes < EVENT_SIZE) {
        this.#onDrop(
          `${this.queue.name} queue: dropped an event buffer of ${this.#segments.bytes} bytes, smaller than ${EVENT_SIZE}`,
        );
        this.queue.push(head, 0);
        continue;
      }
      new DataView(this.#bytes.buffer).setUint32(
        0,
        this.#pending.shift()!,
        true,
      );
      const view = this.#segments.contiguous(this.queue.region, 0, EVENT_SIZE);
      if (view !== null) view.set(this.#bytes);
      else {
        // A 4-byte buffer split over descriptors: rare, but legal.
        let at = 0;
        for (let i = 0; i < this.#segments.count && at < EVENT_SIZE; i++) {
          const len = Math.min(this.#segments.lengths[i]!, EVENT_SIZE - at);
          this.queue.region.write(
            this.#segments.offsets[i]!,
            this.#bytes.subarray(at, at + len),
          );
          at += len;
        }
      }
      this.queue.push(head, EVENT_SIZE);
      n++;
    }
    this.queue.publish();
    return n;
  }
}

/** Driver role: posts event buffers and reads the events. */
export class DriverEvents {
  readonly queue: DriverQueue;
  /** Buffer offset of each posted head. */
  #bufferOf: Int32Array;
  #onError: (reason: string) => void;

  /**
   * Posts `count` 4-byte buffers starting at `base` (inside the pool).
   */
  constructor(
    queue: DriverQueue,
    base: number,
    count: number,
    onError: (reason: string) => void = () => {},
  ) {
    this.queue = queue;
    this.#onError = onError;
    this.#bufferOf = new Int32Array(queue.layout.size).fill(-1);
    for (let i = 0; i < count; i++) this.#post(base + i * EVENT_SIZE);
    queue.publish();
  }

  #post(at: number): void {
    const head = this.queue.add(at, EVENT_SIZE, true);
    if (head >= 0) this.#bufferOf[head] = at;
  }

  /** Bytes of pool this needs for `count` buffers. */
  static bytesFor(count: number): number {
    return count * EVENT_SIZE;
  }

  /** The next event id, or -1 when none arrived. Reposts the buffer. */
  next(): number {
    for (;;) {
      const head = this.queue.nextUsed();
      if (head < 0) return -1;
      const len = this.queue.usedLength;
      const at = this.#bufferOf[head]!;
      const id = this.queue.region.getU32(at);
      this.#post(at);
      this.queue.publish();
      if (len !== EVENT_SIZE) {
        this.#onError(
          `event queue: used length ${len}, expected ${EVENT_SIZE}`,
        );
        continue;
      }
      return id;
    }
  }
}
