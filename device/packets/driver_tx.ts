/**
 * Driver role, driver-to-device direction: writes packets into transmit
 * buffer space and posts them on the tx queue.
 *
 * @module
 */

import type { DriverQueue } from "../virtqueue/driver_queue.ts";
import type { ByteRing } from "./byte_ring.ts";
import {
  encodeHeader,
  HDR_LEN,
  HeaderScratch,
  MAX_PAYLOAD,
  type PacketHeader,
} from "./header.ts";

/** Options for {@linkcode DriverTx}. */
export interface DriverTxOptions {
  /**
   * Post the header and the payload as two descriptors, as older Linux
   * drivers do, instead of one. Both forms are valid; tests use this to
   * exercise the device's gather path.
   * @default {false}
   */
  splitHeader?: boolean;
}

/** Sends vsock packets through a driver-side tx queue. */
export class DriverTx {
  readonly queue: DriverQueue;
  #space: ByteRing;
  #ticket: Int32Array;
  #split: boolean;
  #hdr = new HeaderScratch();
  #offsets = [0, 0];
  #lengths = [0, 0];

  constructor(
    queue: DriverQueue,
    space: ByteRing,
    options: DriverTxOptions = {},
  ) {
    this.queue = queue;
    this.#space = space;
    this.#split = options.splitHeader ?? false;
    this.#ticket = new Int32Array(queue.layout.size).fill(-1);
  }

  /**
   * Copies a packet into transmit space and adds it to the queue (call
   * `queue.publish()` to make it visible). `header.len` is set from
   * `payload`. Returns false, changing nothing, when no descriptor or space
   * is free: reclaim and retry.
   *
   * @throws {RangeError} if the payload exceeds {@linkcode MAX_PAYLOAD}.
   */
  send(header: PacketHeader, payload: Uint8Array): boolean {
    if (payload.length > MAX_PAYLOAD) {
      throw new RangeError(
        `Cannot send a packet: payload of ${payload.length} bytes exceeds ${MAX_PAYLOAD}`,
      );
    }
    this.reclaim();
    // A queue of one descriptor cannot hold a split packet: fall back.
    const descriptors =
      this.#split && payload.length > 0 && this.queue.layout.size > 1 ? 2 : 1;
    if (this.queue.freeCount < descriptors) return false;
    const total = HDR_LEN + payload.length;
    const a = this.#space.alloc(total);
    if (a === null) return false;
    header.len = payload.length;
    encodeHeader(this.#hdr.view, 0, header);
    const region = this.queue.region;
    region.write(a.offset, this.#hdr.plain);
    region.write(a.offset + HDR_LEN, payload);
    if (descriptors === 2) {
      this.#offsets[0] = a.offset;
      this.#lengths[0] = HDR_LEN;
      this.#offsets[1] = a.offset + HDR_LEN;
      this.#lengths[1] = payload.length;
    } else {
      this.#offsets.length = 1;
      this.#lengths.length = 1;
      this.#offsets[0] = a.offset;
      this.#lengths[0] = total;
    }
    const head = this.queue.addChain(this.#offsets, this.#lengths, descriptors);
    this.#offsets.length = 2;
    this.#lengths.length = 2;
    this.#ticket[head] = a.ticket;
    return true;
  }

  /**
   * The largest payload a packet could carry now (after reclaiming what the
   * device has consumed), or -1 when no packet fits at all.
   */
  room(): number {
    this.reclaim();
    if (this.queue.freeCount < 1) return -1;
    const largest = this.#space.largestFree();
    return largest < HDR_LEN ? -1 : Math.min(MAX_PAYLOAD, largest - HDR_LEN);
  }

  /** Frees the space of every packet the device has consumed. */
  reclaim(): number {
    let n = 0;
    for (;;) {
      const head = this.queue.nextUsed();
      if (head < 0) return n;
      const ticket = this.#ticket[head]!;
      this.#ticket[head] = -1;
      if (ticket >= 0) this.#space.release(ticket);
      n++;
    }
  }
}
