/**
 * The vsock engine: the table of connections and listeners of one side of
 * one transport, and the demultiplexer between them and the queues. The
 * same engine serves the device role (host side, local CID 2) and the
 * driver role (the guest agent, local CID = guest_cid).
 *
 * Incoming packets (`receive`), in the order the checks are made:
 * - a source CID other than the peer's, or a destination other than ours:
 *   dropped (the driver must use guest_cid as src_cid; Firecracker drops
 *   dst_cid != 2 silently);
 * - a type that is not STREAM, or SEQPACKET when negotiated: RST;
 * - a packet for a known (local port, peer CID, peer port): handed to that
 *   connection's state machine;
 * - a REQUEST for a listening port with room in its backlog and below the
 *   connection limit: a new connection, answered with RESPONSE;
 * - any other packet for no connection: RST, except an RST, which is never
 *   answered.
 *
 * Outgoing packets (`transmit`): replies not tied to a connection first (a
 * bounded queue: when it is full, further ones are dropped and counted, so
 * reading the tx queue never stops for lack of rx room), then connections
 * with something to send, round-robin, a few packets each per round.
 *
 * @module
 */

import {
  INVALID_CID,
  newHeader,
  OP,
  OP_NAMES,
  type PacketHeader,
  TYPE,
} from "../packets/header.ts";
import type { InboundPacket } from "../packets/inbound_packet.ts";
import { type LogFn, rateLimited, silentLog } from "../log.ts";
import {
  CLOSE_TIMEOUT_MS,
  CONNECT_TIMEOUT_MS,
  DEFAULT_BACKLOG,
  DEFAULT_BUF_ALLOC,
  DEFAULT_MAX_CONNECTIONS,
  EPHEMERAL_FIRST,
  EPHEMERAL_LAST,
  INITIAL_BUF_ALLOC,
  MAX_PENDING_REPLIES,
  PACKETS_PER_TURN,
} from "./constants.ts";
import {
  type CloseInfo,
  type ConnectionHost,
  type PacketSink,
  VsockConnection,
} from "./connection.ts";
import { VsockError } from "./errors.ts";
import { VsockListener } from "./listener.ts";

/** Engine settings. */
export interface EngineOptions {
  /**
   * The largest receive window (buf_alloc) a connection grows to, and so
   * the most unread data it holds. @default {DEFAULT_BUF_ALLOC}
   */
  bufAlloc?: number;
  connectTimeoutMs?: number;
  closeTimeoutMs?: number;
  maxConnections?: number;
  log?: LogFn;
  /** Told about connections coming and going, refusals and resets. */
  onEvent?: (event: EngineEvent) => void;
}

/** Something an observer (the admin API, metrics) may want to know. */
export type EngineEvent =
  | { type: "open"; connection: VsockConnection }
  | { type: "close"; connection: VsockConnection; info: CloseInfo }
  | { type: "refuse"; port: number; peerPort: number; reason: string }
  | { type: "drop"; reason: string }
  | { type: "transport"; state: "up" | "down"; reason: string };

/** Counters by packet op and by reason. */
export interface EngineStats {
  packetsIn: Record<string, number>;
  packetsOut: Record<string, number>;
  /** RSTs we sent for packets that had no connection, by reason. */
  refused: Record<string, number>;
  /** Packets dropped without a reply, by reason. */
  dropped: Record<string, number>;
  /** Connections that ended, by how. */
  closed: Record<string, number>;
  opened: number;
}

/** Options of {@linkcode VsockEngine.connect}. */
export interface ConnectOptions {
  /** `"stream"` (default) or `"seqpacket"`. */
  type?: "stream" | "seqpacket";
  timeoutMs?: number;
}

/** Options of {@linkcode VsockEngine.listen}. */
export interface ListenOptions {
  type?: "stream" | "seqpacket";
  backlog?: number;
}

const EMPTY = new Uint8Array(0);

/** One side's vsock connections over one transport. */
export class VsockEngine implements ConnectionHost {
  readonly bufAlloc: number;
  /** The window each connection starts with: 256 KiB, or less if bufAlloc is. */
  readonly initialBufAlloc: number;
  readonly connectTimeoutMs: number;
  readonly closeTimeoutMs: number;
  readonly maxConnections: number;
  readonly stats: EngineStats = {
    packetsIn: {},
    packetsOut: {},
    refused: {},
    dropped: {},
    closed: {},
    opened: 0,
  };
  #localCid = -1;
  #peerCid = -1;
  #seqpacket = false;
  #active = false;
  #kick: () => void = () => {};
  #log: LogFn;
  #limited: ReturnType<typeof rateLimited>;
  #onEvent: (e: EngineEvent) => void;
  /** local port -> peer port -> connection. */
  #table = new Map<number, Map<number, VsockConnection>>();
  #count = 0;
  #listeners = new Map<number, VsockListener>();
  #ready = new Set<VsockConnection>();
  #replies: PacketHeader[] = [];
  #header = newHeader();
  #nextEphemeral = EPHEMERAL_FIRST;

  constructor(options: EngineOptions = {}) {
    this.bufAlloc = options.bufAlloc ?? DEFAULT_BUF_ALLOC;
    this.initialBufAlloc = Math.min(INITIAL_BUF_ALLOC, this.bufAlloc);
    this.connectTimeoutMs = options.connectTimeoutMs ?? CONNECT_TIMEOUT_MS;
    this.closeTimeoutMs = options.closeTimeoutMs ?? CLOSE_TIMEOUT_MS;
    this.maxConnections = options.maxConnections ?? DEFAULT_MAX_CONNECTIONS;
    this.#log = options.log ?? silentLog;
    this.#limited = rateLimited(this.#log);
    this.#onEvent = options.onEvent ?? (() => {});
  }

  get localCid(): number {
    return this.#localCid;
  }

  get peerCid(): number {
    return this.#peerCid;
  }

  /** Whether a transport is up. */
  get active(): boolean {
    return this.#active;
  }

  /** Live connections. */
  get connectionCount(): number {
    return this.#count;
  }

  /** Every live connection. */
  *connections(): IterableIterator<VsockConnection> {
    for (const byPeer of this.#table.values()) yield* byPeer.values();
  }

  /** Whether anything waits to be sent (replies or connections with output). */
  hasOutput(): boolean {
    return this.#replies.length > 0 || this.#ready.size > 0;
  }

  /** Replies waiting for room (for metrics). */
  get pendingReplies(): number {
    return this.#replies.length;
  }

  /** Replaces the event observer (see {@linkcode EngineOptions.onEvent}). */
  setObserver(onEvent: (event: EngineEvent) => void): void {
    this.#onEvent = onEvent;
  }

  /** Sets what to call when there is something new to transmit. */
  setKick(kick: () => void): void {
    this.#kick = kick;
  }

  // ---- transport side -----------------------------------------------------

  /** A transport came up between `localCid` and `peerCid`. */
  activate(localCid: number, peerCid: number, seqpacket: boolean): void {
    this.#localCid = localCid;
    this.#peerCid = peerCid;
    this.#seqpacket = seqpacket;
    this.#active = true;
    this.#onEvent({
      type: "transport",
      state: "up",
      reason: `peer CID ${peerCid}`,
    });
  }

  /**
   * The transport went away, or the peer sent TRANSPORT_RESET: every
   * connection ends with ENETRESET; listeners stay.
   */
  deactivate(reason: string): void {
    const wasActive = this.#active;
    this.#active = false;
    this.#replies = [];
    for (const conn of [...this.connections()]) {
      conn.abort("ENETRESET", `transport reset: ${reason}`);
    }
    this.#ready.clear();
    if (wasActive) this.#onEvent({ type: "transport", state: "down", reason });
  }

  /** Handles one packet from the peer; copies what it keeps. */
  receive(packet: InboundPacket): void {
    const h = packet.header;
    this.#count_(this.stats.packetsIn, OP_NAMES[h.op] ?? "unknown");
    if (!this.#active) return;
    if (h.srcCid !== this.#peerCid) {
      this.#drop(
        h.srcCid === INVALID_CID
          ? "source CID has reserved upper bits set"
          : `source CID ${h.srcCid} is not the peer's (${this.#peerCid})`,
      );
      return;
    }
    if (h.dstCid !== this.#localCid) {
      this.#drop(
        `destination CID ${
          h.dstCid === INVALID_CID ? "(reserved bits set)" : h.dstCid
        } is not ours (${this.#localCid})`,
      );
      return;
    }
    if (
      h.type !== TYPE.STREAM && !(h.type === TYPE.SEQPACKET && this.#seqpacket)
    ) {
      this.#refuse(
        h,
        h.type === TYPE.SEQPACKET
          ? "SEQPACKET was not negotiated"
          : `unknown socket type ${h.type}`,
      );
      return;
    }
    const conn = this.#table.get(h.dstPort)?.get(h.srcPort);
    if (conn !== undefined) {
      conn.handle(h, packet);
      return;
    }
    if (h.op === OP.REQUEST) {
      this.#incoming(h);
      return;
    }
    this.#refuse(h, `${OP_NAMES[h.op] ?? `op ${h.op}`} for no connection`);
  }

  /**
   * Writes what is pending into `sink`; returns the number of packets sent.
   * Stops when the sink is full or nothing is left.
   */
  transmit(sink: PacketSink): number {
    let n = 0;
    while (this.#replies.length > 0) {
      if (sink.room() < 0 || !sink.send(this.#replies[0]!, EMPTY)) return n;
      this.#countOut(this.#replies.shift()!);
      n++;
    }
    const h = this.#header;
    let progress = true;
    while (progress && this.#ready.size > 0) {
      progress = false;
      for (const conn of [...this.#ready]) {
        if (sink.room() < 0) return n;
        let k = 0;
        while (k < PACKETS_PER_TURN) {
          const sent = conn.produce(sink, h);
          if (sent === 0) break;
          this.#countOut(h, sent);
          k += sent;
        }
        n += k;
        if (k > 0) progress = true;
        // Round robin: whoever still has output goes to the back.
        this.#ready.delete(conn);
        if (conn.hasOutput()) this.#ready.add(conn);
      }
    }
    return n;
  }

  // ---- application side ---------------------------------------------------

  /**
   * Listens on a local port.
   *
   * @throws {VsockError} EADDRINUSE if the port is taken. (A SEQPACKET
   * listener on a transport without SEQPACKET simply never hears from it.)
   * @throws {RangeError} for a port outside 0..2^32-2.
   */
  listen(port: number, options: ListenOptions = {}): VsockListener {
    checkPort(port);
    if (this.#listeners.has(port)) {
      throw new VsockError("EADDRINUSE", `port ${port} is already listened on`);
    }
    const type = socketType(options.type);
    const listener = new VsockListener(
      port,
      type,
      options.backlog ?? DEFAULT_BACKLOG,
      (l) => {
        if (this.#listeners.get(l.port) === l) this.#listeners.delete(l.port);
      },
    );
    this.#listeners.set(port, listener);
    return listener;
  }

  /**
   * Opens a connection to the peer's `port`.
   *
   * @throws {VsockError} (rejects) ENOTCONN without a transport,
   * ESOCKTNOSUPPORT for SEQPACKET not negotiated, EADDRNOTAVAIL at the
   * connection limit, ECONNREFUSED if the peer resets, ETIMEDOUT.
   */
  connect(
    port: number,
    options: ConnectOptions = {},
  ): Promise<VsockConnection> {
    checkPort(port);
    const type = socketType(options.type);
    if (!this.#active) {
      return Promise.reject(
        new VsockError("ENOTCONN", "the transport is not running"),
      );
    }
    if (type === TYPE.SEQPACKET && !this.#seqpacket) {
      return Promise.reject(
        new VsockError(
          "ESOCKTNOSUPPORT",
          "the peer did not negotiate SEQPACKET",
        ),
      );
    }
    if (this.#count >= this.maxConnections) {
      return Promise.reject(
        new VsockError(
          "EADDRNOTAVAIL",
          `connection limit of ${this.maxConnections} reached`,
        ),
      );
    }
    const localPort = this.#ephemeralPort(port);
    if (localPort < 0) {
      return Promise.reject(
        new VsockError("EADDRNOTAVAIL", "no ephemeral port free"),
      );
    }
    const conn = new VsockConnection(this, {
      localPort,
      peerPort: port,
      type,
      initiator: "local",
    });
    this.#add(conn);
    return new Promise((resolve, reject) => {
      conn.startConnect(options.timeoutMs ?? this.connectTimeoutMs, (err) => {
        if (err) reject(err);
        else {
          this.#onEvent({ type: "open", connection: conn });
          resolve(conn);
        }
      });
    });
  }

  /** Ends every connection and listener (the process is shutting down). */
  close(): void {
    for (const l of [...this.#listeners.values()]) l.close();
    this.deactivate("engine closed");
  }

  // ---- ConnectionHost -----------------------------------------------------

  schedule(conn: VsockConnection): void {
    if (!this.#ready.has(conn)) {
      this.#ready.add(conn);
      this.#kick();
    }
  }

  release(conn: VsockConnection): void {
    const byPeer = this.#table.get(conn.localPort);
    if (byPeer?.get(conn.peerPort) === conn) {
      byPeer.delete(conn.peerPort);
      if (byPeer.size === 0) this.#table.delete(conn.localPort);
      this.#count--;
      const info = conn.closeInfo!;
      this.#count_(this.stats.closed, info.reason);
      this.#onEvent({ type: "close", connection: conn, info });
    }
    // A connection still owing an RST stays in #ready until it is sent.
    if (!conn.hasOutput()) this.#ready.delete(conn);
  }

  // ---- internals ----------------------------------------------------------

  #incoming(h: PacketHeader): void {
    const listener = this.#listeners.get(h.dstPort);
    if (listener === undefined) {
      this.#refuse(h, `no listener on port ${h.dstPort}`);
      return;
    }
    if (listener.type !== h.type) {
      this.#refuse(
        h,
        `port ${h.dstPort} listens for type ${listener.type}, not ${h.type}`,
      );
      return;
    }
    if (listener.full) {
      this.#refuse(
        h,
        `port ${h.dstPort} backlog of ${listener.backlog} is full`,
      );
      return;
    }
    if (this.#count >= this.maxConnections) {
      this.#refuse(h, `connection limit of ${this.maxConnections} reached`);
      return;
    }
    const conn = new VsockConnection(this, {
      localPort: h.dstPort,
      peerPort: h.srcPort,
      type: h.type,
      initiator: "peer",
    });
    this.#add(conn);
    conn.accept(h);
    this.#onEvent({ type: "open", connection: conn });
    listener.offer(conn);
  }

  #add(conn: VsockConnection): void {
    let byPeer = this.#table.get(conn.localPort);
    if (byPeer === undefined) {
      byPeer = new Map();
      this.#table.set(conn.localPort, byPeer);
    }
    byPeer.set(conn.peerPort, conn);
    this.#count++;
    this.stats.opened++;
  }

  /** Queues an RST answering `h` (never for an RST), bounded. */
  #refuse(h: PacketHeader, reason: string): void {
    if (h.op === OP.RST) {
      // Linux drops these silently: both ends of a simultaneous close send
      // one, and each finds its connection already gone. Counted, not
      // warned about.
      this.#drop(`RST for no connection (${reason})`, "debug");
      return;
    }
    this.#count_(this.stats.refused, reason.replace(/\d+/g, "N"));
    this.#onEvent({
      type: "refuse",
      port: h.dstPort,
      peerPort: h.srcPort,
      reason,
    });
    this.#limited(
      "refuse",
      "debug",
      `answering ${
        OP_NAMES[h.op] ?? `op ${h.op}`
      } from port ${h.srcPort} to ${h.dstPort} with RST: ${reason}`,
    );
    if (this.#replies.length >= MAX_PENDING_REPLIES) {
      this.#drop("reply queue full");
      return;
    }
    const r = newHeader();
    r.srcCid = this.#localCid;
    r.dstCid = this.#peerCid;
    r.srcPort = h.dstPort;
    r.dstPort = h.srcPort;
    r.type = h.type;
    r.op = OP.RST;
    this.#replies.push(r);
    this.#kick();
  }

  #drop(reason: string, level: "warn" | "debug" = "warn"): void {
    this.#count_(this.stats.dropped, reason.replace(/\d+/g, "N"));
    this.#onEvent({ type: "drop", reason });
    this.#limited("drop", level, `dropped a packet: ${reason}`);
  }

  #ephemeralPort(peerPort: number): number {
    const span = EPHEMERAL_LAST - EPHEMERAL_FIRST + 1;
    for (let tries = 0; tries < span && tries < 65536; tries++) {
      const port = this.#nextEphemeral;
      this.#nextEphemeral = port === EPHEMERAL_LAST
        ? EPHEMERAL_FIRST
        : port + 1;
      if (
        !this.#listeners.has(port) &&
        this.#table.get(port)?.get(peerPort) === undefined
      ) {
        return port;
      }
    }
    return -1;
  }

  #countOut(h: PacketHeader, packets = 1): void {
    this.#count_(this.stats.packetsOut, OP_NAMES[h.op] ?? "unknown", packets);
  }

  #count_(map: Record<string, number>, key: string, n = 1): void {
    map[key] = (map[key] ?? 0) + n;
  }
}

function socketType(t: "stream" | "seqpacket" | undefined): number {
  return t === "seqpacket" ? TYPE.SEQPACKET : TYPE.STREAM;
}

function checkPort(port: number): void {
  // 0xffffffff is VMADDR_PORT_ANY.
  if (!Number.isInteger(port) || port < 0 || port >= 0xffffffff) {
    throw new RangeError(
      `A vsock port must be an integer from 0 to 4294967294, received ${port}`,
    );
  }
}
