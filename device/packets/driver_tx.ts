/**
 * Driver role, driver-to-device direction: writes packets into transmit
 * buffer space and posts them on the tx queue.
 *
 * @module
 */

import type { DriverQueue } from "../virtqueue/driver_queue.ts";
import type { ByteRing } from "./byte_ring.ts";
import {
  type ByteSource,
  FILL_BYTES,
  FILL_PACKETS,
  fillFrom,
} from "./byte_source.ts";
import { SegmentList } from "../virtqueue/segments.ts";
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
  /** The payload ranges of the packets one {@linkcode sendFrom} plans. */
  #dest = new SegmentList();
  #planOffset = new Uint32Array(FILL_PACKETS);
  #planTicket = new Int32Array(FILL_PACKETS);
  /** Packets the last {@linkcode sendFrom} wrote. */
  filledPackets = 0;

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
    this.#post(a.offset, payload.length, descriptors, a.ticket);
    return true;
  }

  /**
   * Sends up to `max` payload bytes read straight from `source` into
   * transmit space, as consecutive packets of up to
   * {@linkcode MAX_PAYLOAD} (as many as fit in {@linkcode FILL_BYTES}, at
   * most {@linkcode FILL_PACKETS}), added to the queue (call
   * `queue.publish()`). `header` is every packet's header but for `len`.
   * Returns the payload bytes sent (setting {@linkcode filledPackets}), 0
   * when no space or descriptor was free or the source had nothing, or -1
   * at the source's end of input (nothing sent).
   *
   * @throws {SourceFailure} when the source fails; nothing is sent then.
   */
  sendFrom(header: PacketHeader, max: number, source: ByteSource): number {
    this.filledPackets = 0;
    this.reclaim();
    const perPacket = this.#split && this.queue.layout.size > 1 ? 2 : 1;
    const dest = this.#dest;
    dest.clear();
    let left = Math.floor(max);
    let count = 0;
    while (
      count < FILL_PACKETS && left > 0 &&
      this.queue.freeCount >= (count + 1) * perPacket
    ) {
      const p = Math.min(
        left,
        MAX_PAYLOAD,
        this.#space.largestFree() - HDR_LEN,
      );
      if (p <= 0 || (count > 0 && dest.bytes + p > FILL_BYTES)) break;
      const a = this.#space.alloc(HDR_LEN + p)!;
      this.#planOffset[count] = a.offset;
      this.#planTicket[count] = a.ticket;
      dest.push(a.offset + HDR_LEN, p);
      count++;
      left -= p;
    }
    if (count === 0) return 0;
    let n: number | null = 0;
    try {
      n = fillFrom(source, this.queue.region, dest);
    } finally {
      // Space no byte went into goes back, newest first (n is 0 if fill threw).
      let at = 0;
      let used = 0;
      while (used < count && at < (n ?? 0)) {
        at += dest.lengths[used++]!;
      }
      for (let j = count - 1; j >= used; j--) {
        this.#space.undoLast(this.#planTicket[j]!);
      }
      if (used > 0 && at > n!) {
        const last = used - 1;
        this.#space.shrinkLast(
          this.#planTicket[last]!,
          HDR_LEN + dest.lengths[last]! - (at - n!),
        );
      }
    }
    if (n === null) return -1;
    let at = 0;
    let packets = 0;
    const region = this.queue.region;
    for (let j = 0; at < n; j++) {
      const len = Math.min(dest.lengths[j]!, n - at);
      const offset = this.#planOffset[j]!;
      header.len = len;
      encodeHeader(this.#hdr.view, 0, header);
      region.write(offset, this.#hdr.plain);
      this.#post(offset, len, perPacket, this.#planTicket[j]!);
      at += len;
      packets++;
    }
    this.filledPackets = packets;
    return n;
  }

  /** Adds the chain of a packet written at `offset`. */
  #post(offset: number, len: number, descriptors: number, ticket: number) {
    if (descriptors === 2 && len > 0) {
      this.#offsets[0] = offset;
      this.#lengths[0] = HDR_LEN;
      this.#offsets[1] = offset + HDR_LEN;
      this.#lengths[1] = len;
    } else {
      descriptors = 1;
      this.#offsets.length = 1;
      this.#lengths.length = 1;
      this.#offsets[0] = offset;
      this.#lengths[0] = HDR_LEN + len;
    }
    const head = this.queue.addChain(this.#offsets, this.#lengths, descriptors);
    this.#offsets.length = 2;
    this.#lengths.length = 2;
    this.#ticket[head] = ticket;
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
