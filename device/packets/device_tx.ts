/**
 * Device role, driver-to-device direction: reads packets from the tx queue.
 *
 * Each chain must hold a 44-byte header followed by at least `len` payload
 * bytes, `len` at most {@linkcode MAX_PAYLOAD}. Anything else is dropped with
 * a reason. The payload is handed over as a view when it lies in one buffer
 * (the usual case) and gathered into a reused scratch buffer otherwise.
 *
 * @module
 */

import type { DeviceQueue } from "../virtqueue/device_queue.ts";
import { SegmentList } from "../virtqueue/segments.ts";
import { decodeHeader, HDR_LEN, HeaderScratch, MAX_PAYLOAD } from "./header.ts";
import { InboundPacket } from "./inbound_packet.ts";

/** Reads vsock packets from a device-reads queue. */
export class DeviceTx {
  readonly queue: DeviceQueue;
  readonly packet: InboundPacket = new InboundPacket();
  #segments = new SegmentList();
  #hdr = new HeaderScratch();
  #scratch = new Uint8Array(MAX_PAYLOAD);
  #onDrop: (reason: string) => void;
  /** Head of the chain behind {@linkcode packet}, or -1. */
  #current = -1;

  constructor(queue: DeviceQueue, onDrop: (reason: string) => void = () => {}) {
    this.queue = queue;
    this.#onDrop = onDrop;
  }

  /**
   * Returns the previous packet's chain to the driver and reads the next
   * packet into {@linkcode packet}. Returns false when none is available.
   * Call {@linkcode DeviceTx.flush} after a batch to publish the returned
   * chains.
   */
  next(): boolean {
    this.#release();
    const region = this.queue.region;
    for (;;) {
      this.#segments.clear();
      const head = this.queue.pop(this.#segments);
      if (head < 0) return false;
      const segs = this.#segments;
      if (segs.bytes < HDR_LEN) {
        this.#drop(
          head,
          `tx packet of ${segs.bytes} bytes is shorter than the ${HDR_LEN}-byte header`,
        );
        continue;
      }
      segs.gather(region, 0, this.#hdr.plain);
      const h = decodeHeader(this.#hdr.view, 0, this.packet.header);
      if (h.len > MAX_PAYLOAD) {
        this.#drop(
          head,
          `tx packet payload length ${h.len} exceeds ${MAX_PAYLOAD}`,
        );
        continue;
      }
      if (segs.bytes - HDR_LEN < h.len) {
        this.#drop(
          head,
          `tx packet claims ${h.len} payload bytes but its buffers hold ${
            segs.bytes - HDR_LEN
          }`,
        );
        continue;
      }
      this.packet.clear();
      if (h.len > 0) {
        const view = segs.contiguous(region, HDR_LEN, h.len);
        if (view !== null) {
          this.packet.addChunk(view);
        } else {
          const dest = this.#scratch.subarray(0, h.len);
          segs.gather(region, HDR_LEN, dest);
          this.packet.addChunk(dest);
        }
      }
      this.#current = head;
      return true;
    }
  }

  /** Returns the current chain (if any) and publishes the used ring. */
  flush(): void {
    this.#release();
    this.queue.publish();
  }

  #release(): void {
    if (this.#current >= 0) {
      // The device writes nothing into tx buffers: used length 0.
      this.queue.push(this.#current, 0);
      this.#current = -1;
    }
  }

  #drop(head: number, reason: string): void {
    this.#onDrop(`${this.queue.name} queue: dropped a packet: ${reason}`);
    this.queue.push(head, 0);
  }
}
