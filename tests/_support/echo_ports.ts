/**
 * Packet-level ports for transport tests: the device echoes every RW packet
 * back with source and destination swapped; the driver sends a seeded byte
 * stream and checks what comes back. No vsock connection logic: that is the
 * engine's job, tested on its own.
 *
 * @module
 */

import type { DevicePort } from "../../device/transport/device_runner.ts";
import type { DriverPort } from "../../device/transport/driver_runner.ts";
import type { DeviceRx } from "../../device/packets/device_rx.ts";
import type { DriverTx } from "../../device/packets/driver_tx.ts";
import type { InboundPacket } from "../../device/packets/inbound_packet.ts";
import {
  newHeader,
  OP,
  type PacketHeader,
  TYPE,
} from "../../device/packets/header.ts";

/** Echoes RW packets; counts what it saw. */
export class DeviceEcho implements DevicePort {
  pending: Array<{ header: PacketHeader; payload: Uint8Array }> = [];
  activations = 0;
  deactivations: string[] = [];
  received = 0;
  #header = newHeader();

  activated(): void {
    this.activations++;
  }

  deactivated(reason: string): void {
    this.deactivations.push(reason);
    this.pending = [];
  }

  receive(packet: InboundPacket): void {
    const h = packet.header;
    if (h.op !== OP.RW) return;
    this.received++;
    const header = {
      ...h,
      srcCid: h.dstCid,
      dstCid: h.srcCid,
      srcPort: h.dstPort,
      dstPort: h.srcPort,
    };
    this.pending.push({ header, payload: packet.payloadCopy() });
  }

  transmit(rx: DeviceRx): number {
    let n = 0;
    while (this.pending.length > 0) {
      const room = rx.room();
      const next = this.pending[0]!;
      if (room < 0 || (room < next.payload.length && room === 0)) break;
      const take = Math.min(room, next.payload.length);
      Object.assign(this.#header, next.header);
      if (!rx.put(this.#header, next.payload.subarray(0, take))) break;
      if (take === next.payload.length) this.pending.shift();
      else next.payload = next.payload.subarray(take);
      n++;
    }
    return n;
  }
}

/** Sends `total` bytes in chunks and collects the echo. */
export class DriverStream implements DriverPort {
  readonly data: Uint8Array;
  readonly echoed: Uint8Array;
  sent = 0;
  received = 0;
  activations = 0;
  deactivations: string[] = [];
  events: number[] = [];
  guestCid = 0;
  #header = newHeader();
  #chunk: number;
  #onProgress: () => void;

  constructor(
    data: Uint8Array,
    chunk = 8192,
    onProgress: () => void = () => {},
  ) {
    this.data = data;
    this.echoed = new Uint8Array(data.length);
    this.#chunk = chunk;
    this.#onProgress = onProgress;
  }

  get done(): boolean {
    return this.received >= this.data.length;
  }

  activated(q: { guestCid: number }): void {
    this.activations++;
    this.guestCid = q.guestCid;
    // Whatever was in flight when the transport went away is gone: resend
    // from what came back (the echo is in order).
    this.sent = this.received;
  }

  deactivated(reason: string): void {
    this.deactivations.push(reason);
  }

  event(id: number): void {
    this.events.push(id);
  }

  receive(packet: InboundPacket): void {
    if (packet.header.op !== OP.RW) return;
    const n = packet.header.len;
    if (this.received + n > this.data.length) {
      throw new Error("echo returned more than was sent");
    }
    packet.copyPayload(this.echoed, this.received);
    this.received += n;
    this.#onProgress();
  }

  transmit(tx: DriverTx, maxPayload: number): number {
    let n = 0;
    const h = this.#header;
    h.srcCid = this.guestCid;
    h.dstCid = 2;
    h.srcPort = 1234;
    h.dstPort = 7;
    h.type = TYPE.STREAM;
    h.op = OP.RW;
    // Keep at most 256 KiB in flight so the echo never piles up unboundedly.
    while (
      this.sent < this.data.length && this.sent - this.received < 256 * 1024
    ) {
      const len = Math.min(
        this.#chunk,
        maxPayload,
        this.data.length - this.sent,
      );
      if (!tx.send(h, this.data.subarray(this.sent, this.sent + len))) break;
      this.sent += len;
      n++;
    }
    return n;
  }
}
