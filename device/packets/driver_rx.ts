/**
 * Driver role, device-to-driver direction: posts receive buffers and
 * reassembles the packets the device writes into them.
 *
 * Receive buffers are equal slots of `bufferSize` bytes cut from a window of
 * the region. With MRG_RXBUF a packet may span several used buffers: the
 * first begins with the 46-byte header whose `num_buffers` says how many.
 * Everything the device reports is checked: used lengths against the slot
 * size and the header, `num_buffers` against what can exist, every buffer but
 * the last full, the total equal to the header's `len`. A packet that fails
 * is dropped, its buffers are posted again, and `onError` says why; the
 * process carries on.
 *
 * @module
 */

import type { DriverQueue } from "../virtqueue/driver_queue.ts";
import {
  decodeHeader,
  HDR_LEN,
  HeaderScratch,
  MAX_PAYLOAD,
  MRG_HDR_LEN,
  NUM_BUFFERS_OFFSET,
} from "./header.ts";
import { InboundPacket } from "./inbound_packet.ts";

/** Options for {@linkcode DriverRx}. */
export interface DriverRxOptions {
  mergeable: boolean;
  /**
   * Bytes per receive buffer: at least 46 with MRG_RXBUF, at least 44
   * without (the seed says drivers SHOULD post 4096 or more then).
   */
  bufferSize: number;
  /** Region window the slots are cut from. */
  window: { start: number; end: number };
  /**
   * Split each buffer into descriptors of at most this many bytes (tests use
   * it to exercise the device's scatter across descriptors).
   * @default {bufferSize}
   */
  descriptorBytes?: number;
  /** Called with the reason whenever a packet from the device is dropped. */
  onError?: (reason: string) => void;
}

/** Receives vsock packets through a driver-side rx queue. */
export class DriverRx {
  readonly queue: DriverQueue;
  readonly mergeable: boolean;
  readonly bufferSize: number;
  readonly headerLength: number;
  /** Number of buffer slots. */
  readonly slots: number;
  readonly packet: InboundPacket = new InboundPacket();
  #windowStart: number;
  #descriptorBytes: number;
  #onError: (reason: string) => void;
  #slotOfHead: Int32Array;
  /** Slots not posted, used as a stack. */
  #freeSlots: Uint32Array;
  #freeCount: number;
  /** Slots (and used lengths) of the packet being assembled or delivered. */
  #pendingSlots: Uint32Array;
  #pendingLens: Uint32Array;
  #pendingCount = 0;
  #want = 0;
  #delivered = false;
  #hdr = new HeaderScratch();
  #offsets: number[] = [];
  #lengths: number[] = [];
  /** Packets dropped because the device broke a rule. */
  errors = 0;

  constructor(queue: DriverQueue, options: DriverRxOptions) {
    const min = options.mergeable ? MRG_HDR_LEN : HDR_LEN;
    if (!Number.isInteger(options.bufferSize) || options.bufferSize < min) {
      throw new RangeError(
        `Receive buffers must be at least ${min} bytes${
          options.mergeable ? " with mergeable buffers" : ""
        }, received ${options.bufferSize}`,
      );
    }
    this.queue = queue;
    this.mergeable = options.mergeable;
    this.bufferSize = options.bufferSize;
    this.headerLength = min;
    this.#windowStart = options.window.start;
    this.#descriptorBytes = options.descriptorBytes ?? options.bufferSize;
    const per = Math.ceil(this.bufferSize / this.#descriptorBytes);
    if (!(per >= 1 && per <= queue.layout.size)) {
      throw new RangeError(
        `Cannot split ${this.bufferSize}-byte receive buffers into ${this.#descriptorBytes}-byte descriptors: a queue of ${queue.layout.size} cannot hold ${per} per buffer`,
      );
    }
    this.#onError = options.onError ?? (() => {});
    const q = queue.layout.size;
    const fit = Math.floor(
      (options.window.end - options.window.start) / options.bufferSize,
    );
    this.slots = Math.min(q, fit);
    if (this.slots < 1) {
      throw new RangeError(
        `Cannot place receive buffers: a window of ${
          options.window.end - options.window.start
        } bytes holds no ${options.bufferSize}-byte buffer`,
      );
    }
    this.#slotOfHead = new Int32Array(q).fill(-1);
    this.#freeSlots = new Uint32Array(this.slots);
    for (let i = 0; i < this.slots; i++) {
      this.#freeSlots[i] = this.slots - 1 - i;
    }
    this.#freeCount = this.slots;
    this.#pendingSlots = new Uint32Array(this.slots);
    this.#pendingLens = new Uint32Array(this.slots);
  }

  /**
   * Posts every free slot the queue has descriptors for. Returns how many
   * were added; call `queue.publish()` afterwards.
   */
  fill(): number {
    const per = Math.ceil(this.bufferSize / this.#descriptorBytes);
    let n = 0;
    while (this.#freeCount > 0 && this.queue.freeCount >= per) {
      const slot = this.#freeSlots[--this.#freeCount]!;
      const base = this.#windowStart + slot * this.bufferSize;
      this.#offsets.length = 0;
      this.#lengths.length = 0;
      for (let at = 0; at < this.bufferSize; at += this.#descriptorBytes) {
        this.#offsets.push(base + at);
        this.#lengths.push(
          Math.min(this.#descriptorBytes, this.bufferSize - at),
        );
      }
      const head = this.queue.addChain(this.#offsets, this.#lengths, 0);
      this.#slotOfHead[head] = slot;
      n++;
    }
    return n;
  }

  /**
   * Gives back the previous packet's buffers and assembles the next packet
   * into {@linkcode packet}. Returns false when no complete packet has
   * arrived yet.
   */
  next(): boolean {
    if (this.#delivered) {
      this.#recycle();
      this.#delivered = false;
    }
    for (;;) {
      const head = this.queue.nextUsed();
      if (head < 0) return false;
      const slot = this.#slotOfHead[head]!;
      this.#slotOfHead[head] = -1;
      const len = this.queue.usedLength;
      this.#pendingSlots[this.#pendingCount] = slot;
      this.#pendingLens[this.#pendingCount] = len;
      this.#pendingCount++;
      if (this.#pendingCount === 1 && !this.#startPacket(slot, len)) {
        this.#recycle();
        continue;
      }
      if (this.#pendingCount < this.#want) continue;
      if (this.#finishPacket()) {
        this.#delivered = true;
        return true;
      }
      this.#recycle();
    }
  }

  /** Decodes the first buffer's header; false (after reporting) if unusable. */
  #startPacket(slot: number, len: number): boolean {
    const h = this.headerLength;
    if (len < h) {
      return this.#reject(
        `used length ${len} is shorter than the ${h}-byte header`,
      );
    }
    const region = this.queue.region;
    const base = this.#windowStart + slot * this.bufferSize;
    region.read(base, this.#hdr.sized(h));
    const header = decodeHeader(this.#hdr.view, 0, this.packet.header);
    if (header.len > MAX_PAYLOAD) {
      return this.#reject(
        `payload length ${header.len} exceeds ${MAX_PAYLOAD}`,
      );
    }
    if (this.mergeable) {
      const n = this.#hdr.view.getUint16(NUM_BUFFERS_OFFSET, true);
      // A packet of at most 46 + 64 KiB needs at most this many buffers.
      const most = Math.min(
        Math.ceil((h + header.len) / this.bufferSize),
        this.slots,
      );
      if (n === 0 || n > most) {
        return this.#reject(
          `num_buffers ${n} is impossible for a ${header.len}-byte payload in ${this.bufferSize}-byte buffers`,
        );
      }
      this.#want = n;
    } else {
      this.#want = 1;
    }
    return true;
  }

  /** Checks the collected buffers and points the packet's chunks at them. */
  #finishPacket(): boolean {
    const h = this.headerLength;
    const n = this.#pendingCount;
    let total = 0;
    for (let i = 0; i < n; i++) {
      const len = this.#pendingLens[i]!;
      if (i < n - 1 && len !== this.bufferSize) {
        return this.#reject(
          `buffer ${
            i + 1
          } of ${n} holds ${len} bytes, but every buffer but the last must be full (${this.bufferSize})`,
        );
      }
      total += len;
    }
    const header = this.packet.header;
    if (total !== h + header.len) {
      return this.#reject(
        `the packet's buffers hold ${
          total - h
        } payload bytes, but its header says ${header.len}`,
      );
    }
    const region = this.queue.region;
    const packet = this.packet;
    packet.clear();
    for (let i = 0; i < n; i++) {
      const base = this.#windowStart + this.#pendingSlots[i]! * this.bufferSize;
      const skip = i === 0 ? h : 0;
      packet.addChunk(region.span(base + skip, this.#pendingLens[i]! - skip));
    }
    return true;
  }

  #reject(reason: string): false {
    this.errors++;
    this.#onError(
      `${this.queue.name} queue: dropped a packet from the device: ${reason}`,
    );
    return false;
  }

  /** Returns the pending buffers to the free list and reposts them. */
  #recycle(): void {
    for (let i = 0; i < this.#pendingCount; i++) {
      this.#freeSlots[this.#freeCount++] = this.#pendingSlots[i]!;
    }
    this.#pendingCount = 0;
    this.#want = 0;
    this.fill();
  }
}
