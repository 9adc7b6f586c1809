/**
 * Packet-level hostility: well-formed chains carrying malformed or abusive
 * vsock packets (bad ops, types, lengths, CIDs, ports, flags, credit), RST
 * storms, REQUEST floods, SHUTDOWN oddities, and the actor's own
 * connections to the host echo, on which it then misbehaves (ignores
 * credit, sends after SHUTDOWN, lies about buf_alloc and fwd_cnt).
 *
 * None of it may disturb the well-behaved connections. So the actor never
 * uses a good connection's ports (the guest's ephemeral range and its
 * listener), except to aim packets at a good connection that the host must
 * drop unseen: a foreign source CID, a wrong destination CID, a type that
 * is neither STREAM nor SEQPACKET.
 *
 * @module
 */

import {
  CID,
  encodeHeader,
  HDR_LEN,
  MAX_PAYLOAD,
  newHeader,
  OP,
  OP_NAMES,
  type PacketHeader,
  SEQ_F,
  SHUTDOWN_F,
  TYPE,
} from "../../device/packets/header.ts";
import type { InboundPacket } from "../../device/packets/inbound_packet.ts";
import type { VsockEngine } from "../../device/vsock/engine.ts";
import {
  EPHEMERAL_FIRST,
  EPHEMERAL_LAST,
} from "../../device/vsock/constants.ts";
import { Prng } from "../_support/prng.ts";
import { GUEST_ECHO_PORT, HOST_PORTS } from "./good_traffic.ts";
import { SINK_SEQ_PORT, SINK_STREAM_PORT } from "./host_sinks.ts";
import type { HostileTx } from "./hostile_tx.ts";
import { GUEST_CID } from "./fuzz_rig.ts";

/** The actor's own local ports: the host's replies to them come to it. */
export const HOSTILE_PORT_FIRST = 0x9000_0000;
const HOSTILE_PORT_COUNT = 4096;
/** Ports of its flood connections, just past the others. */
const FLOOD_PORT_FIRST = HOSTILE_PORT_FIRST + HOSTILE_PORT_COUNT;
const FLOOD_PORT_COUNT = 64;

/** Whether `port` is one of the actor's. */
export function isHostilePort(port: number): boolean {
  return port >= HOSTILE_PORT_FIRST &&
    port < FLOOD_PORT_FIRST + FLOOD_PORT_COUNT;
}

/** Connections the actor keeps open at most; older ones are reset. */
const MAX_OPEN = 24;

/** One of the actor's connections as a raw socket sees it. */
interface RawConn {
  port: number;
  peerPort: number;
  type: number;
  open: boolean;
  txCnt: number;
  rxCnt: number;
  peerBufAlloc: number;
  peerFwdCnt: number;
}

/** Ports of the well-behaved side, which the actor must not impersonate. */
function isGoodGuestPort(port: number): boolean {
  return (port >= EPHEMERAL_FIRST && port <= EPHEMERAL_LAST) ||
    port === GUEST_ECHO_PORT;
}

/** Counters of what the actor did and heard. */
export interface PacketStats {
  sent: number;
  /** STREAM floods the host reset although they kept within credit. */
  streamFloodResets: number;
  /** SEQPACKET floods the host reset (expected past its packet limit). */
  seqFloodResets: number;
  /** Sends skipped because the queue or space was full. */
  full: number;
  heard: Record<string, number>;
}

/** The packet-level actor. */
export class HostilePackets {
  readonly stats: PacketStats = {
    sent: 0,
    streamFloodResets: 0,
    seqFloodResets: 0,
    full: 0,
    heard: {},
  };
  #conns = new Map<number, RawConn>();
  #nextPort = 0;
  /**
   * The connection the actor floods with empty or one-byte packets, to a
   * host application that never reads, and how many it has sent on it.
   */
  flood: (RawConn & { sent: number }) | null = null;

  /** Connections the actor holds open or half-open. */
  get connections(): number {
    return this.#conns.size;
  }

  /** The transport went away: every raw connection is gone with it. */
  reset(): void {
    this.#conns.clear();
    this.flood = null;
  }

  /** A packet from the host for one of the actor's ports. */
  hear(packet: InboundPacket): void {
    const h = packet.header;
    const name = OP_NAMES[h.op] ?? "other";
    this.stats.heard[name] = (this.stats.heard[name] ?? 0) + 1;
    const c = this.#conns.get(h.dstPort) ??
      (this.flood?.port === h.dstPort ? this.flood : undefined);
    if (c === undefined || c.peerPort !== h.srcPort) return;
    c.peerBufAlloc = h.bufAlloc;
    c.peerFwdCnt = h.fwdCnt;
    if (h.op === OP.RESPONSE) c.open = true;
    else if (h.op === OP.RST) {
      this.#conns.delete(c.port);
      if (c === this.flood) {
        if (c.type === TYPE.STREAM) this.stats.streamFloodResets++;
        else this.stats.seqFloodResets++;
        this.flood = null;
      }
    } else if (h.op === OP.RW) c.rxCnt = (c.rxCnt + h.len) >>> 0;
  }

  /**
   * One round of packet-level hostility, chosen by `rng`. `guest` lists the
   * good connections (for the aimed-but-harmless packets).
   */
  act(rng: Prng, tx: HostileTx, guest: VsockEngine): string {
    const scenario = rng.int(0, 99);
    if (scenario < 25) {
      const n = rng.int(1, 8);
      for (let i = 0; i < n; i++) this.#send(tx, this.#randomHeader(rng), rng);
      return "random headers";
    }
    if (scenario < 35) {
      this.#aimAtGood(rng, tx, guest);
      return "aimed at a good connection";
    }
    if (scenario < 43) {
      const n = rng.int(8, 64);
      for (let i = 0; i < n; i++) {
        const h = this.#randomHeader(rng);
        h.op = OP.RST;
        this.#send(tx, h, rng, 0);
      }
      return "RST storm";
    }
    if (scenario < 51) {
      const n = rng.int(8, 64);
      for (let i = 0; i < n; i++) {
        const h = this.#randomHeader(rng);
        h.op = OP.REQUEST;
        h.srcCid = GUEST_CID;
        h.dstCid = CID.HOST;
        h.type = rng.chance(0.8) ? TYPE.STREAM : TYPE.SEQPACKET;
        if (rng.chance(0.7)) h.dstPort = rng.pick(HOST_PORTS);
        this.#send(tx, h, rng, 0);
      }
      return "REQUEST flood";
    }
    if (scenario < 63) {
      this.#open(rng, tx);
      return "open a raw connection";
    }
    if (scenario < 88) {
      return this.#misbehave(rng, tx);
    }
    if (scenario < 96) {
      this.#rawGarbage(rng, tx);
      return "malformed lengths, CIDs and num_buffers";
    }
    this.#closeAll(tx);
    return "reset own connections";
  }

  #randomHeader(rng: Prng): PacketHeader {
    const h = newHeader();
    h.srcCid = rng.chance(0.85) ? GUEST_CID : rng.pick(ODD_CIDS);
    h.dstCid = rng.chance(0.85) ? CID.HOST : rng.pick(ODD_CIDS);
    h.srcPort = this.#ownPort(rng);
    h.dstPort = rng.chance(0.5) ? rng.pick(HOST_PORTS) : rng.pick([
      0,
      1,
      80,
      rng.u32(),
      0xffffffff,
      EPHEMERAL_FIRST + rng.int(0, 1000),
    ]);
    h.type = rng.chance(0.7)
      ? TYPE.STREAM
      : rng.pick([TYPE.SEQPACKET, 0, 3, 0xffff, rng.int(0, 0xffff)]);
    h.op = rng.chance(0.8) ? rng.int(0, 7) : rng.pick([8, 255, 0xffff]);
    h.flags = rng.chance(0.5) ? rng.int(0, 3) : rng.u32();
    h.bufAlloc = rng.pick([
      0,
      1,
      4096,
      262144,
      0x7fffffff,
      0xffffffff,
      rng.u32(),
    ]);
    h.fwdCnt = rng.pick([0, rng.u32(), 0xffffffff]);
    return h;
  }

  /** A local port: mostly the actor's own, sometimes anything not good. */
  #ownPort(rng: Prng): number {
    if (rng.chance(0.7)) {
      return HOSTILE_PORT_FIRST + rng.int(0, HOSTILE_PORT_COUNT - 1);
    }
    for (;;) {
      const p = rng.pick([0, 1, 1023, 0xffffffff, 0xfffffffe, rng.u32()]);
      if (!isGoodGuestPort(p)) return p;
    }
  }

  /**
   * Packets with a live good connection's ports that the host must drop or
   * refuse without touching the connection.
   */
  #aimAtGood(rng: Prng, tx: HostileTx, guest: VsockEngine): void {
    const conns = [...guest.connections()];
    if (conns.length === 0) return;
    const c = rng.pick(conns);
    const n = rng.int(1, 6);
    for (let i = 0; i < n; i++) {
      const h = this.#randomHeader(rng);
      h.srcPort = c.localPort;
      h.dstPort = c.peerPort;
      h.op = rng.int(0, 7);
      switch (rng.int(0, 2)) {
        case 0: // not the guest's CID
          h.srcCid = rng.pick([0, 1, CID.HOST, GUEST_CID + 1, 0xffffffff]);
          h.type = c.type;
          break;
        case 1: // not for the host
          h.srcCid = GUEST_CID;
          h.dstCid = rng.pick([0, 1, GUEST_CID, 4, 0xffffffff]);
          h.type = c.type;
          break;
        default: // a type nobody speaks: refused with an RST of that type
          h.srcCid = GUEST_CID;
          h.dstCid = CID.HOST;
          h.type = rng.pick([0, 3, 4, 0xffff]);
      }
      this.#send(tx, h, rng);
    }
  }

  #open(rng: Prng, tx: HostileTx): void {
    if (this.#conns.size >= MAX_OPEN) this.#resetOldest(tx);
    const port = HOSTILE_PORT_FIRST +
      (this.#nextPort++ % HOSTILE_PORT_COUNT);
    const seqpacket = rng.chance(0.25);
    const c: RawConn = {
      port,
      peerPort: seqpacket ? HOST_PORTS[1] : HOST_PORTS[0],
      type: seqpacket ? TYPE.SEQPACKET : TYPE.STREAM,
      open: false,
      txCnt: 0,
      rxCnt: 0,
      peerBufAlloc: 0,
      peerFwdCnt: 0,
    };
    // Replace any earlier connection on this port.
    const old = this.#conns.get(port);
    if (old !== undefined) this.#rst(tx, old);
    this.#conns.set(port, c);
    const h = this.#header(c, OP.REQUEST);
    h.bufAlloc = rng.pick([0, 1, 4096, 262144, 0xffffffff]);
    this.#send(tx, h, rng, 0);
  }

  #misbehave(rng: Prng, tx: HostileTx): string {
    const open = [...this.#conns.values()];
    if (open.length === 0) {
      this.#open(rng, tx);
      return "open a raw connection";
    }
    const c = rng.pick(open);
    const kind = rng.int(0, 10);
    const h = this.#header(c, OP.RW);
    h.bufAlloc = rng.pick([0, 4096, 262144, 0xffffffff]);
    h.fwdCnt = rng.chance(0.7) ? c.rxCnt : rng.u32();
    switch (kind) {
      case 0: { // flood past the credit the host gave
        const n = rng.int(2, 12);
        for (let i = 0; i < n; i++) {
          const len = rng.int(1, MAX_PAYLOAD);
          this.#send(tx, { ...h }, rng, len);
          c.txCnt = (c.txCnt + len) >>> 0;
        }
        return "write past credit";
      }
      case 1: { // in-credit data, so the echo has work
        const len = rng.int(0, 8192);
        this.#send(tx, h, rng, len);
        c.txCnt = (c.txCnt + len) >>> 0;
        return "write data";
      }
      case 2:
        h.op = OP.SHUTDOWN;
        h.flags = rng.pick([0, 1, 2, 3, 4, 0xfffffffc, 0xffffffff, rng.u32()]);
        this.#send(tx, h, rng, rng.chance(0.8) ? 0 : rng.int(1, 100));
        return "odd SHUTDOWN";
      case 3: // SHUTDOWN(SEND) then more data
        h.op = OP.SHUTDOWN;
        h.flags = SHUTDOWN_F.SEND;
        this.#send(tx, { ...h }, rng, 0);
        h.op = OP.RW;
        this.#send(tx, h, rng, rng.int(1, 1000));
        return "data after SHUTDOWN";
      case 4: { // CREDIT_REQUEST storm
        h.op = OP.CREDIT_REQUEST;
        const n = rng.int(4, 40);
        for (let i = 0; i < n; i++) this.#send(tx, { ...h }, rng, 0);
        return "CREDIT_REQUEST storm";
      }
      case 5:
        h.op = OP.CREDIT_UPDATE;
        h.bufAlloc = rng.u32();
        h.fwdCnt = rng.u32();
        this.#send(tx, h, rng, rng.chance(0.8) ? 0 : rng.int(1, 64));
        return "lying CREDIT_UPDATE";
      case 6:
        h.op = rng.pick([OP.REQUEST, OP.RESPONSE]);
        this.#send(tx, h, rng, 0);
        return "REQUEST/RESPONSE on an open connection";
      case 7:
        h.type = c.type === TYPE.STREAM ? TYPE.SEQPACKET : TYPE.STREAM;
        this.#send(tx, h, rng, rng.int(0, 100));
        return "type switch";
      case 8:
        h.op = rng.pick([OP.INVALID, 8, 0xffff]);
        this.#send(tx, h, rng, rng.int(0, 100));
        return "unknown op";
      case 9:
        if (c.type === TYPE.SEQPACKET) {
          // Message parts without EOM, then odd flag bits.
          for (let i = rng.int(1, 6); i > 0; i--) {
            h.flags = rng.chance(0.5) ? 0 : rng.u32() & ~1;
            this.#send(tx, { ...h }, rng, rng.int(0, 4096));
          }
          return "seqpacket parts without EOM";
        }
        this.#rst(tx, c);
        return "RST own connection";
      default:
        this.#rst(tx, c);
        return "RST own connection";
    }
  }

  /** Headers whose bytes no encoder would write. */
  #rawGarbage(rng: Prng, tx: HostileTx): void {
    const h = this.#randomHeader(rng);
    const payload = rng.int(0, 256);
    const bytes = new Uint8Array(HDR_LEN + payload);
    const view = new DataView(bytes.buffer);
    h.len = payload;
    encodeHeader(view, 0, h);
    switch (rng.int(0, 6)) {
      case 6: { // a mergeable rx header (with num_buffers) sent on tx, where
        // num_buffers does not exist: its two bytes are payload, or excess
        const mrg = new Uint8Array(bytes.length + 2);
        mrg.set(bytes.subarray(0, HDR_LEN));
        new DataView(mrg.buffer).setUint16(HDR_LEN, rng.int(0, 0xffff), true);
        mrg.set(bytes.subarray(HDR_LEN), HDR_LEN + 2);
        if (rng.chance(0.5)) {
          new DataView(mrg.buffer).setUint32(24, payload + 2, true);
        }
        if (tx.sendRaw(mrg) === null) this.stats.full++;
        else this.stats.sent++;
        return;
      }
      case 0: // len claims more than the chain holds
        view.setUint32(24, payload + rng.int(1, 100_000), true);
        break;
      case 1: // len above the 64 KiB limit
        view.setUint32(
          24,
          rng.pick([MAX_PAYLOAD + 1, 0x7fffffff, 0xffffffff]),
          true,
        );
        break;
      case 2: // len claims less than the chain holds
        view.setUint32(24, rng.int(0, payload), true);
        break;
      case 3: // reserved upper CID bits
        view.setUint32(rng.chance(0.5) ? 4 : 12, rng.int(1, 0xffffffff), true);
        break;
      case 4: { // shorter than a header
        tx.sendRaw(rng.bytes(rng.int(0, HDR_LEN - 1))) === null
          ? this.stats.full++
          : this.stats.sent++;
        return;
      }
      default: // all random
        bytes.set(rng.bytes(bytes.length));
    }
    if (tx.sendRaw(bytes) === null) this.stats.full++;
    else this.stats.sent++;
  }

  /**
   * Empty or one-byte packets, as many as the queue takes, at a host
   * application that does not read: they use (almost) no credit.
   */
  floodSink(rng: Prng, tx: HostileTx): string {
    const f = this.flood;
    if (f === null) {
      const seqpacket = rng.chance(0.6);
      const c = {
        port: FLOOD_PORT_FIRST + (this.#nextPort++ % FLOOD_PORT_COUNT),
        peerPort: seqpacket ? SINK_SEQ_PORT : SINK_STREAM_PORT,
        type: seqpacket ? TYPE.SEQPACKET : TYPE.STREAM,
        open: false,
        txCnt: 0,
        rxCnt: 0,
        peerBufAlloc: 0,
        peerFwdCnt: 0,
        sent: 0,
      };
      this.flood = c;
      this.#send(tx, this.#header(c, OP.REQUEST), rng, 0);
      return "open a flood connection";
    }
    if (!f.open) return "flood connection not open yet";
    const h = this.#header(f, OP.RW);
    h.flags = f.type === TYPE.SEQPACKET ? SEQ_F.EOM : 0;
    const empty = f.type === TYPE.SEQPACKET && rng.chance(0.7);
    const n = Math.min(tx.queues.tx.freeCount, rng.int(16, 256));
    for (let i = 0; i < n; i++) {
      // A STREAM flood stays within credit: the host must keep it.
      if (f.type === TYPE.STREAM && f.txCnt >= 200_000) break;
      if (tx.send(h, PAYLOAD.subarray(0, empty ? 0 : 1)) === null) break;
      f.sent++;
      if (!empty) f.txCnt++;
      this.stats.sent++;
    }
    return f.type === TYPE.SEQPACKET
      ? "flood a non-reading host with tiny messages"
      : "flood a non-reading host with one-byte packets";
  }

  #closeAll(tx: HostileTx): void {
    for (const c of [...this.#conns.values()]) this.#rst(tx, c);
  }

  #resetOldest(tx: HostileTx): void {
    const oldest = this.#conns.values().next().value;
    if (oldest !== undefined) this.#rst(tx, oldest);
  }

  #rst(tx: HostileTx, c: RawConn): void {
    this.#conns.delete(c.port);
    this.#send(tx, this.#header(c, OP.RST), NO_RNG, 0);
  }

  #header(c: RawConn, op: number): PacketHeader {
    const h = newHeader();
    h.srcCid = GUEST_CID;
    h.dstCid = CID.HOST;
    h.srcPort = c.port;
    h.dstPort = c.peerPort;
    h.type = c.type;
    h.op = op;
    h.bufAlloc = 262144;
    h.fwdCnt = c.rxCnt;
    return h;
  }

  /** Sends with a random payload (`len` bytes, or a random length). */
  #send(tx: HostileTx, h: PacketHeader, rng: Prng, len?: number): void {
    const n = len ?? (rng.chance(0.6) ? 0 : rng.int(1, 4096));
    if (tx.send(h, PAYLOAD.subarray(0, n)) === null) this.stats.full++;
    else this.stats.sent++;
  }
}

/** CIDs that are not the guest's or the host's. */
const ODD_CIDS = [0, 1, CID.HOST, 4, 0xfffffffe, 0xffffffff];

/** Payload bytes: their content does not matter, only their number. */
const PAYLOAD = new Prng(0x5eed).bytes(MAX_PAYLOAD);

/** A generator for the few sends that need no randomness. */
const NO_RNG = new Prng(0);
