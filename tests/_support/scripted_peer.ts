/**
 * One engine and a scripted peer: the test writes the peer's packets by
 * hand and reads what the engine sends back, with no transport in between.
 * For the protocol's corner cases.
 *
 * @module
 */

import {
  FILL_BYTES,
  FILL_PACKETS,
  fillFrom,
} from "../../device/packets/byte_source.ts";
import { InboundPacket } from "../../device/packets/inbound_packet.ts";
import { Region } from "../../device/shm/region.ts";
import { SegmentList } from "../../device/virtqueue/segments.ts";
import {
  MAX_PAYLOAD,
  newHeader,
  OP,
  OP_NAMES,
  type PacketHeader,
  TYPE,
} from "../../device/packets/header.ts";
import type {
  PacketSink,
  VsockConnection,
} from "../../device/vsock/connection.ts";
import { type EngineOptions, VsockEngine } from "../../device/vsock/engine.ts";

/** A packet the engine sent. */
export interface Sent {
  h: PacketHeader;
  payload: Uint8Array;
}

export const LOCAL_CID = 2;
export const PEER_CID = 3;

/** An engine (host role, CID 2) talking to a scripted guest (CID 3). */
export class ScriptedPeer {
  readonly engine: VsockEngine;
  /** Everything the engine sent, oldest first. */
  readonly sent: Sent[] = [];
  /** Largest payload the sink accepts; -1 blocks it entirely. */
  room = MAX_PAYLOAD;
  kicks = 0;
  /** Packets the sink's last sendFrom sent. */
  filledPackets = 0;
  #dest = new SegmentList();
  #scratch = Region.alloc(FILL_BYTES);
  readonly sink: PacketSink = this.#makeSink();
  #packet = new InboundPacket();
  #pumping = false;

  #makeSink(): PacketSink {
    // deno-lint-ignore no-this-alias
    const peer = this;
    return {
      room: () => this.room,
      send: (h, payload) => {
        if (this.room < 0 || payload.length > this.room) return false;
        this.sent.push({
          h: { ...h, len: payload.length },
          payload: payload.slice(),
        });
        return true;
      },
      // Pulls into scratch memory in packets of at most `room` bytes each,
      // as the rings' sinks do into their buffers.
      sendFrom: (h, max, source) => {
        this.filledPackets = 0;
        if (this.room <= 0) return 0;
        const dest = this.#dest;
        dest.clear();
        const per = Math.min(this.room, MAX_PAYLOAD);
        let left = Math.min(max, FILL_BYTES);
        for (let at = 0; left > 0 && dest.count < FILL_PACKETS; at += per) {
          dest.push(at, Math.min(per, left));
          left -= per;
        }
        const n = fillFrom(source, this.#scratch, dest);
        if (n === null) return -1;
        let at = 0;
        while (at < n) {
          const len = Math.min(per, n - at);
          this.sent.push({
            h: { ...h, len },
            payload: this.#scratch.span(at, len).slice(),
          });
          this.filledPackets++;
          at += len;
        }
        return n;
      },
      get filledPackets() {
        return peer.filledPackets;
      },
    };
  }

  constructor(options: EngineOptions = {}, seqpacket = true) {
    this.engine = new VsockEngine(options);
    this.engine.setKick(() => this.kicks++);
    this.engine.activate(LOCAL_CID, PEER_CID, seqpacket);
  }

  /** An established connection on local port 80 from peer port 5000. */
  async open(): Promise<VsockConnection> {
    const listener = this.engine.listen(80);
    this.deliver({ op: OP.REQUEST, srcPort: 5000, dstPort: 80 });
    this.pump();
    const conn = await listener.accept();
    listener.close();
    return conn;
  }

  /** Delivers a packet from the peer. Defaults: an RW on a STREAM, peer -> us. */
  deliver(
    fields: Partial<PacketHeader>,
    payload: Uint8Array = new Uint8Array(0),
  ): void {
    const h = this.#packet.header;
    Object.assign(h, newHeader(), {
      srcCid: PEER_CID,
      dstCid: LOCAL_CID,
      type: TYPE.STREAM,
      op: OP.RW,
      bufAlloc: 256 * 1024,
    }, fields);
    h.len = payload.length;
    this.#packet.clear();
    this.#packet.addChunk(payload);
    this.engine.receive(this.#packet);
  }

  /** Lets the engine transmit; returns what it sent this time. */
  pump(): Sent[] {
    const before = this.sent.length;
    this.#pumping = true;
    try {
      this.engine.transmit(this.sink);
    } finally {
      this.#pumping = false;
    }
    return this.sent.slice(before);
  }

  /**
   * Transmits on every kick from outside a pump, as the runners do for a
   * change made outside their turn: each request goes out on its own.
   */
  eager(): this {
    this.engine.setKick(() => {
      this.kicks++;
      if (!this.#pumping) this.pump();
    });
    return this;
  }

  /** The ops of what `pump()` sent, as names. */
  pumpOps(): string[] {
    return this.pump().map((s) => opName(s.h.op));
  }
}

export function opName(op: number): string {
  return OP_NAMES[op] ?? `op ${op}`;
}

/** Waits for microtasks and timers of `ms` to run. */
export function tick(ms = 0): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
