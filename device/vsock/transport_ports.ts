/**
 * Plugs a {@linkcode VsockEngine} into the transport runners: the device
 * role (host side, CID 2) and the driver role (the guest agent).
 *
 * @module
 */

import type { DeviceRx } from "../packets/device_rx.ts";
import type { DriverTx } from "../packets/driver_tx.ts";
import type { InboundPacket } from "../packets/inbound_packet.ts";
import { CID } from "../packets/header.ts";
import type { ActiveQueues } from "../transport/device_transport.ts";
import type { DevicePort } from "../transport/device_runner.ts";
import type { DriverQueues } from "../transport/driver_transport.ts";
import type { DriverPort } from "../transport/driver_runner.ts";
import { EVENT_ID } from "../transport/event_queue.ts";
import { hasFeature, VSOCK_FEATURE } from "../transport/features.ts";
import type { PacketSink } from "./connection.ts";
import type { VsockEngine } from "./engine.ts";

/** The engine as the device loop's port. */
export class DeviceEnginePort implements DevicePort {
  readonly engine: VsockEngine;
  readonly guestCid: number;
  #sink: PacketSink | null = null;

  constructor(engine: VsockEngine, guestCid: number) {
    this.engine = engine;
    this.guestCid = guestCid;
  }

  activated(queues: ActiveQueues): void {
    const rx = queues.deviceRx;
    this.#sink = {
      room: () => rx.room(),
      send: (h, p) => rx.put(h, p),
      sendFrom: (h, max, source) => rx.sendFrom(h, max, source),
      get filledPackets() {
        return rx.filledPackets;
      },
    };
    this.engine.activate(
      CID.HOST,
      this.guestCid,
      hasFeature(queues.features, VSOCK_FEATURE.SEQPACKET),
    );
  }

  deactivated(reason: string): void {
    this.#sink = null;
    this.engine.deactivate(reason);
  }

  receive(packet: InboundPacket): void {
    this.engine.receive(packet);
  }

  transmit(_rx: DeviceRx): number {
    return this.#sink === null ? 0 : this.engine.transmit(this.#sink);
  }

  hasPendingOutput(): boolean {
    return this.engine.hasOutput();
  }
}

/** The engine as the driver loop's port. */
export class DriverEnginePort implements DriverPort {
  readonly engine: VsockEngine;
  #queues: DriverQueues | null = null;
  #sink: PacketSink | null = null;

  constructor(engine: VsockEngine) {
    this.engine = engine;
  }

  activated(queues: DriverQueues): void {
    this.#queues = queues;
    const tx = queues.driverTx;
    this.#sink = {
      room: () => tx.room(),
      send: (h, p) => tx.send(h, p),
      sendFrom: (h, max, source) => tx.sendFrom(h, max, source),
      get filledPackets() {
        return tx.filledPackets;
      },
    };
    this.#start();
  }

  deactivated(reason: string): void {
    this.#queues = null;
    this.#sink = null;
    this.engine.deactivate(reason);
  }

  /** TRANSPORT_RESET: close every connection, keep listeners, re-read guest_cid. */
  event(id: number): void {
    if (id !== EVENT_ID.TRANSPORT_RESET || this.#queues === null) return;
    this.engine.deactivate("the device sent TRANSPORT_RESET");
    this.#start();
  }

  receive(packet: InboundPacket): void {
    this.engine.receive(packet);
  }

  transmit(_tx: DriverTx, _maxPayload: number): number {
    return this.#sink === null ? 0 : this.engine.transmit(this.#sink);
  }

  hasPendingOutput(): boolean {
    return this.engine.hasOutput();
  }

  #start(): void {
    const q = this.#queues!;
    this.engine.activate(
      q.guestCid,
      CID.HOST,
      hasFeature(q.features, VSOCK_FEATURE.SEQPACKET),
    );
  }
}
