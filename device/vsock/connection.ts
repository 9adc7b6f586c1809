/**
 * One vsock connection: its state machine, credit accounting and the pair
 * of Web Streams the application reads and writes.
 *
 * ```text
 *            connect()                      peer REQUEST (listener)
 *               |                                  |
 *          [connecting] --RESPONSE--> [established] <--(RESPONSE sent)
 *               |                        |     |
 *      RST / timeout               close()    peer SHUTDOWN(both)
 *               v                        v     v
 *           [closed] <--RST or timeout-- [closing]   (or RST at once when
 *                    \__ RST sent <-- peer SHUTDOWN(both), nothing left to read)
 * ```
 *
 * Half-close: closing the writable sends SHUTDOWN(SEND) once every queued
 * byte is out; the peer's SHUTDOWN(SEND) ends the readable after the bytes
 * received before it. When both directions are finished the connection
 * closes itself (SHUTDOWN both, then RST from the peer or our own after
 * {@linkcode CLOSE_TIMEOUT_MS}); if input was over first, closing the
 * writable sends that one SHUTDOWN(both) instead of SHUTDOWN(SEND).
 *
 * Credit (virtio 1.3, 5.10.6.3): data is sent only within the peer's
 * advertised space; received data is held until the application reads it,
 * and only reading returns credit, so a slow reader slows the sender instead
 * of growing a buffer. A peer that sends past our buf_alloc is reset.
 *
 * The engine drives a connection through `handle()` (packets in),
 * `hasOutput()` / `produce()` (packets out) and `abort()`.
 *
 * @module
 */

import { type ByteSource, SourceFailure } from "../packets/byte_source.ts";
import {
  OP,
  type PacketHeader,
  SEQ_F,
  SHUTDOWN_F,
  TYPE,
} from "../packets/header.ts";
import type { InboundPacket } from "../packets/inbound_packet.ts";
import {
  creditUpdateThreshold,
  growBufAlloc,
  maxQueuedPackets,
} from "./constants.ts";
import { peerFree, u32Diff } from "./credit.ts";
import { VsockError, type VsockErrorCode } from "./errors.ts";
import { joinLimit, ReceiveBuffer } from "./receive_buffer.ts";
import { VsockMessage } from "./vsock_message.ts";

/** Where a connection stands. */
export type ConnectionState =
  | "connecting"
  | "established"
  | "closing"
  | "closed";

/** How a connection ended. */
export interface CloseInfo {
  /** `"closed"` for an orderly close, else the error code. */
  reason: "closed" | VsockErrorCode;
  message: string;
}

/** Where packets go: the device's rx queue or the driver's tx queue. */
export interface PacketSink {
  /** Largest payload one packet can carry now; -1 when nothing fits. */
  room(): number;
  /** Sends a packet (its `len` is set from `payload`); false if it did not fit. */
  send(header: PacketHeader, payload: Uint8Array): boolean;
  /**
   * Sends packets of up to `max` payload bytes in all, read from `source`
   * straight into their buffers: the bytes sent, 0 if nothing was (no room,
   * or the source had nothing), -1 at the source's end of input. Sets
   * {@linkcode filledPackets}.
   *
   * @throws {SourceFailure} when the source failed (nothing was sent).
   */
  sendFrom(header: PacketHeader, max: number, source: ByteSource): number;
  /** How many packets the last {@linkcode sendFrom} sent. */
  readonly filledPackets: number;
}

/** A {@linkcode ByteSource} that says when it may have bytes. */
export interface PipeSource extends ByteSource {
  /**
   * Whether a fill may find bytes: false after one found none, until the
   * source calls {@linkcode VsockConnection.sourceReady}.
   */
  readonly ready: boolean;
}

/** What a connection needs from its engine. */
export interface ConnectionHost {
  readonly localCid: number;
  readonly peerCid: number;
  /** The largest receive window a connection may grow to. */
  readonly bufAlloc: number;
  /** The receive window a connection starts with. */
  readonly initialBufAlloc: number;
  readonly closeTimeoutMs: number;
  /** The connection has packets to send. */
  schedule(conn: VsockConnection): void;
  /** The connection reached `closed`; forget it. */
  release(conn: VsockConnection): void;
}

/** Traffic counters. */
export interface ConnectionStats {
  /** Payload bytes received from the peer. */
  bytesIn: number;
  /** Payload bytes sent to the peer. */
  bytesOut: number;
  createdAt: number;
  /** `Date.now()` of the last packet either way. */
  lastActivity: number;
}

// Pending control packets, highest priority first (Firecracker's order).
const P_RST = 1;
const P_RESPONSE = 2;
const P_REQUEST = 4;
const P_SHUTDOWN = 8;
const P_CREDIT_UPDATE = 16;
const P_CREDIT_REQUEST = 32;

const EMPTY = new Uint8Array(0);

interface PendingWrite {
  chunk: Uint8Array;
  offset: number;
  eor: boolean;
  resolve: () => void;
  reject: (err: unknown) => void;
}

/** One vsock connection. */
export class VsockConnection {
  readonly localPort: number;
  readonly peerPort: number;
  readonly peerCid: number;
  /** `TYPE.STREAM` or `TYPE.SEQPACKET`. */
  readonly type: number;
  /** Who asked for the connection. */
  readonly initiator: "local" | "peer";
  /** Settles once the connection is closed, however that happened. */
  readonly closed: Promise<CloseInfo>;
  readonly stats: ConnectionStats;

  #host: ConnectionHost;
  #state: ConnectionState;
  #pending = 0;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #closeInfo: CloseInfo | null = null;
  #resolveClosed!: (info: CloseInfo) => void;
  #onEstablished: ((err?: VsockError) => void) | null = null;

  // Credit, ours and the peer's.
  #fwdCnt = 0;
  /** Our receive window (buf_alloc): grows, never shrinks. */
  #bufAlloc: number;
  #rxCnt = 0;
  #lastSentFwdCnt = 0;
  #peerBufAlloc = 0;
  #peerFwdCnt = 0;
  #txCnt = 0;
  #creditRequested = false;

  // Shutdown bits: what we sent, what we still have to send, what the peer sent.
  #localShut = 0;
  #wantShut = 0;
  #peerShut = 0;

  #recv: ReceiveBuffer;
  #readWaiter: (() => void) | null = null;
  #readDone = false;
  #writes: PendingWrite[] = [];
  #writeClosed = false;
  /** What {@linkcode pipeFrom} sends once #writes are out, and its promise. */
  #source: PipeSource | null = null;
  #piped: PromiseWithResolvers<void> | null = null;
  #writableController: WritableStreamDefaultController | null = null;
  #readable: ReadableStream<Uint8Array> | null = null;
  #writable: WritableStream<Uint8Array> | null = null;
  /**
   * Makes the error saying why sending stopped early (set by #stopWriting),
   * for a writable created later. Errors are made only when someone will
   * see them: building one (its stack trace) on every close showed in the
   * connection-rate profile.
   */
  #writeStopError: (() => unknown) | null = null;
  #writeStopped: PromiseWithResolvers<void> | null = null;

  constructor(
    host: ConnectionHost,
    init: {
      localPort: number;
      peerPort: number;
      type: number;
      initiator: "local" | "peer";
    },
  ) {
    this.#host = host;
    this.localPort = init.localPort;
    this.peerPort = init.peerPort;
    this.peerCid = host.peerCid;
    this.type = init.type;
    this.initiator = init.initiator;
    this.#state = init.initiator === "local" ? "connecting" : "established";
    const now = Date.now();
    this.stats = { bytesIn: 0, bytesOut: 0, createdAt: now, lastActivity: now };
    this.#recv = new ReceiveBuffer(init.type === TYPE.SEQPACKET);
    this.#bufAlloc = host.initialBufAlloc;
    this.#recv.limit = joinLimit(this.#bufAlloc);
    this.closed = new Promise((resolve) => (this.#resolveClosed = resolve));
  }

  /**
   * Bytes (STREAM) or one {@linkcode VsockMessage} per message (SEQPACKET).
   * Created on first use: a connection moved by {@linkcode read} alone
   * never pays for a stream (its closures and promises were most of the
   * sidecar's memory per idle connection). Use one or the other.
   */
  get readable(): ReadableStream<Uint8Array> {
    return this.#readable ??= new ReadableStream<Uint8Array>(
      {
        pull: (controller) => this.#pull(controller),
        cancel: () => this.#cancelRead(),
      },
      // Nothing is pulled ahead: unread data stays here, where it counts
      // against the credit we grant.
      { highWaterMark: 0 },
    );
  }

  /**
   * Bytes (STREAM) or one message per chunk (SEQPACKET; a VsockMessage with
   * `eor` sets EOR). Created on first use, like {@linkcode readable}.
   */
  get writable(): WritableStream<Uint8Array> {
    return this.#writable ??= new WritableStream<Uint8Array>(
      {
        start: (controller) => {
          this.#writableController = controller;
          const stopped = this.#writeStopError;
          if (stopped !== null && !this.#writeClosed) {
            controller.error(stopped());
          }
        },
        write: (chunk) => this.#write(chunk),
        close: () => this.#closeWrite(),
        abort: (reason) => this.reset(`writer aborted: ${String(reason)}`),
      },
      { highWaterMark: 1 },
    );
  }

  /**
   * The next chunk (STREAM) or message (SEQPACKET), once there is one;
   * `null` once the peer has finished sending and everything was read.
   * Rejects with a {@linkcode VsockError} if the connection was reset. One
   * read at a time; the direct counterpart of {@linkcode readable}.
   */
  async read(): Promise<Uint8Array | null> {
    for (;;) {
      const chunk = this.#recv.shift();
      if (chunk !== undefined) {
        this.#consumed(chunk.length);
        if (this.#recv.bytes === 0) this.#maybeFinish();
        return chunk;
      }
      if (this.#closeInfo !== null && this.#closeInfo.reason !== "closed") {
        throw new VsockError(this.#closeInfo.reason, this.#closeInfo.message);
      }
      if (
        (this.#peerShut & SHUTDOWN_F.SEND) || this.#state === "closed" ||
        this.#readDone
      ) {
        this.#finishRead();
        return null;
      }
      await new Promise<void>((resolve) => (this.#readWaiter = resolve));
    }
  }

  /**
   * Queues `chunk` to send; resolves once it is out, within the peer's
   * credit. Rejects once the connection can no longer send. The direct
   * counterpart of {@linkcode writable}; wait for each write before the next.
   */
  write(chunk: Uint8Array): Promise<void> {
    return this.#write(chunk);
  }

  /**
   * Sends what `source` has, read straight into the packets' buffers, as
   * credit and ring space allow, after anything queued by
   * {@linkcode write}; at its end of input, closes writing (as
   * {@linkcode closeWrite}). Resolves then, or when {@linkcode close} stops
   * sending; rejects with the source's error if a fill throws, with what
   * {@linkcode unpipe} is given, or with a {@linkcode VsockError} once the
   * connection can no longer send. STREAM only; one source at a time.
   */
  pipeFrom(source: PipeSource): Promise<void> {
    if (this.type !== TYPE.STREAM || this.#source !== null) {
      return Promise.reject(
        new TypeError("pipeFrom needs a STREAM connection with no source"),
      );
    }
    if (this.#state === "closed") {
      return Promise.reject(this.#closedError());
    }
    if (this.#writeClosed || (this.#peerShut & SHUTDOWN_F.RCV)) {
      return Promise.reject(
        new VsockError("EPIPE", "the connection no longer sends"),
      );
    }
    this.#source = source;
    const piped = this.#piped = Promise.withResolvers<void>();
    // Scheduling may send at once, and the source may end right there.
    if (source.ready) this.#schedule();
    return piped.promise;
  }

  /** `source`, if it is the piped one, may have bytes again. */
  sourceReady(source: PipeSource): void {
    if (this.#source === source && source.ready) this.#schedule();
  }

  /**
   * Stops reading `source` if it is the piped one; its
   * {@linkcode pipeFrom} rejects with `err`.
   */
  unpipe(source: PipeSource, err: unknown): void {
    if (this.#source === source) this.#endPipe(err);
  }

  /**
   * Sends SHUTDOWN(SEND) after what is queued: the end of our data. With
   * input already over, this closes the connection (one SHUTDOWN(both)).
   */
  closeWrite(): void {
    this.#closeWrite();
  }

  /** Stops reading: drops unread data and sends SHUTDOWN(RCV). */
  cancelRead(): void {
    this.#cancelRead();
  }

  /**
   * Resolves when sending stopped before our own end of data (the peer shut
   * down receiving, or the connection ended): what erroring the
   * {@linkcode writable} tells a pipe into it, for a writer that is waiting
   * on its own source instead.
   */
  get writeStopped(): Promise<void> {
    if (this.#writeStopped === null) {
      this.#writeStopped = Promise.withResolvers<void>();
      if (this.#writeStopError !== null) this.#writeStopped.resolve();
    }
    return this.#writeStopped.promise;
  }

  /** The current state. */
  get state(): ConnectionState {
    return this.#state;
  }

  /** How the connection ended, once it has. */
  get closeInfo(): CloseInfo | null {
    return this.#closeInfo;
  }

  /** Bytes received and not yet read by the application. */
  get unreadBytes(): number {
    return this.#recv.bytes;
  }

  /** Bytes queued to send and not yet sent. */
  get unsentBytes(): number {
    let n = 0;
    for (const w of this.#writes) n += w.chunk.length - w.offset;
    return n;
  }

  /** The receive window we advertise (buf_alloc), in bytes. */
  get receiveWindow(): number {
    return this.#bufAlloc;
  }

  /** The peer's advertised space left for our data. */
  get peerCredit(): number {
    return peerFree(this.#peerBufAlloc, this.#txCnt, this.#peerFwdCnt);
  }

  /**
   * Closes both directions gracefully: queued data goes out first, then
   * SHUTDOWN; the peer answers with RST, or we send one after the close
   * timeout.
   */
  close(): void {
    if (this.#state === "closed" || this.#state === "closing") return;
    if (this.#state === "connecting") {
      this.reset("closed while connecting");
      return;
    }
    this.#writeClosed = true;
    this.#endPipe();
    this.#finishRead();
    this.#startClosing();
  }

  /** Resets the connection now (RST), dropping queued data either way. */
  reset(message = "reset by the local side"): void {
    if (this.#state === "closed") return;
    this.#pending = P_RST;
    this.#schedule();
    this.#end({ reason: "ECONNABORTED", message }, false);
  }

  // ---- engine-facing ------------------------------------------------------

  /** Marks a locally initiated connection as waiting for RESPONSE. */
  startConnect(timeoutMs: number, done: (err?: VsockError) => void): void {
    this.#onEstablished = done;
    this.#pending |= P_REQUEST;
    this.#timer = setTimeout(() => {
      this.#pending = P_RST;
      this.#schedule();
      this.#end({
        reason: "ETIMEDOUT",
        message:
          `no RESPONSE from port ${this.peerPort} within ${timeoutMs} ms`,
      }, false);
    }, timeoutMs);
    this.#schedule();
  }

  /** A peer REQUEST was accepted: answer with RESPONSE. */
  accept(h: PacketHeader): void {
    this.#updatePeerCredit(h);
    this.#pending |= P_RESPONSE;
    this.#schedule();
  }

  /** Handles a packet addressed to this connection. */
  handle(h: PacketHeader, packet: InboundPacket): void {
    this.stats.lastActivity = Date.now();
    // RST first: whatever else is wrong with it, an RST is never answered.
    if (h.op === OP.RST) {
      this.#peerReset();
      return;
    }
    if (h.type !== this.type) {
      this.#protocolError(
        `peer sent a type ${h.type} packet on a type ${this.type} connection`,
      );
      return;
    }
    this.#updatePeerCredit(h);
    switch (this.#state) {
      case "connecting":
        if (h.op === OP.RESPONSE) {
          clearTimeout(this.#timer);
          this.#timer = undefined;
          this.#state = "established";
          this.#pending &= ~P_REQUEST;
          this.#onEstablished?.();
          this.#onEstablished = null;
          this.#schedule();
        } else if (h.op !== OP.INVALID) {
          // Linux answers anything but RESPONSE in SYN_SENT with RST (EPROTO).
          this.#protocolError(`peer sent op ${h.op} instead of RESPONSE`);
        }
        return;
      case "established":
      case "closing":
        this.#handleOpen(h, packet);
        return;
      case "closed":
        return;
    }
  }

  /** Whether {@linkcode produce} has anything to send. */
  hasOutput(): boolean {
    if (this.#pending !== 0) return true;
    return this.#canSendData() && this.peerCredit > 0;
  }

  /**
   * Sends one packet into `sink`, highest priority first, or several data
   * packets read from a piped source. Returns how many went out.
   */
  produce(sink: PacketSink, h: PacketHeader): number {
    this.#fillHeader(h);
    const p = this.#pending;
    if (p & P_RST) {
      h.op = OP.RST;
      if (!sink.send(h, EMPTY)) return 0;
      this.#pending = 0;
      return 1;
    }
    if (p & P_RESPONSE) {
      return this.#sendControl(sink, h, OP.RESPONSE, P_RESPONSE);
    }
    if (p & P_REQUEST) return this.#sendControl(sink, h, OP.REQUEST, P_REQUEST);
    if (this.#canSendData()) {
      const sent = this.#writes.length > 0
        ? this.#sendData(sink, h)
        : this.#sendPiped(sink, h);
      if (sent > 0) return sent;
      if (this.peerCredit === 0 && !this.#creditRequested) {
        // Out of credit: ask once, the peer answers with CREDIT_UPDATE.
        this.#creditRequested = true;
        this.#pending |= P_CREDIT_REQUEST;
      }
    }
    if ((p & P_SHUTDOWN) && this.#writes.length === 0) {
      h.flags = this.#wantShut;
      if (!this.#sendControl(sink, h, OP.SHUTDOWN, P_SHUTDOWN)) return 0;
      this.#localShut |= this.#wantShut;
      this.#afterShutdownSent();
      return 1;
    }
    if (this.#pending & P_CREDIT_UPDATE) {
      return this.#sendControl(sink, h, OP.CREDIT_UPDATE, P_CREDIT_UPDATE);
    }
    if (this.#pending & P_CREDIT_REQUEST) {
      return this.#sendControl(sink, h, OP.CREDIT_REQUEST, P_CREDIT_REQUEST);
    }
    return 0;
  }

  /** The transport went away or the engine is closing: end without packets. */
  abort(code: VsockErrorCode, message: string): void {
    if (this.#state === "closed") return;
    this.#pending = 0;
    this.#end({ reason: code, message }, false);
  }

  // ---- packets in ---------------------------------------------------------

  #handleOpen(h: PacketHeader, packet: InboundPacket): void {
    switch (h.op) {
      case OP.RW:
        this.#receiveData(h, packet);
        return;
      case OP.CREDIT_UPDATE:
        // Credit was taken from the header above; data may flow again.
        this.#creditRequested = false;
        this.#schedule();
        return;
      case OP.CREDIT_REQUEST:
        this.#pending |= P_CREDIT_UPDATE;
        this.#schedule();
        return;
      case OP.SHUTDOWN:
        this.#peerShutdown(h.flags & (SHUTDOWN_F.RCV | SHUTDOWN_F.SEND));
        return;
      case OP.REQUEST:
      case OP.RESPONSE:
        this.#protocolError(
          `peer sent ${
            h.op === OP.REQUEST ? "REQUEST" : "RESPONSE"
          } on an open connection`,
        );
        return;
      default:
        // Linux drops unknown ops on a connected socket without a reply.
        return;
    }
  }

  #receiveData(h: PacketHeader, packet: InboundPacket): void {
    if (this.#peerShut & SHUTDOWN_F.SEND) {
      this.#protocolError("peer sent data after SHUTDOWN(SEND)");
      return;
    }
    const len = h.len;
    if (this.#recv.bytes + len > this.#bufAlloc) {
      this.#protocolError(
        `peer sent ${len} bytes with ${this.#recv.bytes} of ${this.#bufAlloc} already buffered: beyond the credit it was given`,
      );
      return;
    }
    // Credit counts bytes only, and an empty SEQPACKET message uses none, so
    // the number of queued messages is capped too (see maxQueuedPackets).
    // Nothing is queued once reading has stopped.
    const most = maxQueuedPackets(this.#bufAlloc);
    if (!this.#readDone && this.#recv.entries >= most) {
      this.#protocolError(
        `peer sent more than ${most} packets for the application to read (${this.#recv.bytes} bytes): the memory a ${this.#bufAlloc}-byte receive buffer allows`,
      );
      return;
    }
    this.#rxCnt = (this.#rxCnt + len) >>> 0;
    this.stats.bytesIn += len;
    const seq = this.type === TYPE.SEQPACKET;
    if (this.#readDone) {
      // We stopped reading (SHUTDOWN RCV sent or readable cancelled): the
      // bytes are consumed on arrival so the peer is not stalled by credit.
      this.#consumed(len);
      return;
    }
    this.#recv.push(
      len,
      packet,
      seq && (h.flags & SEQ_F.EOM) !== 0,
      seq && (h.flags & SEQ_F.EOR) !== 0,
    );
    this.#wakeReader();
  }

  #peerShutdown(flags: number): void {
    const before = this.#peerShut;
    this.#peerShut |= flags;
    if ((flags & SHUTDOWN_F.RCV) && !(before & SHUTDOWN_F.RCV)) {
      // The peer reads no more: what we have not sent never will be.
      this.#stopWriting(() =>
        new VsockError("EPIPE", "peer shut down receiving")
      );
      this.#writeClosed = true;
    }
    if (flags & SHUTDOWN_F.SEND) this.#wakeReader();
    if (this.#state === "closing") this.#closingPeerDone();
    else this.#maybeFinish();
  }

  /**
   * Both ends closed at once: each sent SHUTDOWN(both) and is waiting for
   * the other's RST, which neither would send before its close timeout
   * (Linux ignores SHUTDOWN while closing too). Once the peer has shut both
   * directions and nothing is left to read, nothing more can happen: send
   * the RST that ends the peer's wait, and end.
   */
  #closingPeerDone(): void {
    const peerDone = (this.#peerShut & (SHUTDOWN_F.RCV | SHUTDOWN_F.SEND)) ===
      (SHUTDOWN_F.RCV | SHUTDOWN_F.SEND);
    if (!peerDone || !this.#inputDone()) return;
    this.#pending = P_RST;
    this.#schedule();
    this.#end({ reason: "closed", message: "closed" }, true);
  }

  #peerReset(): void {
    if (this.#state === "connecting") {
      this.#end({
        reason: "ECONNREFUSED",
        message: `peer refused port ${this.peerPort}`,
      }, false);
      return;
    }
    // An RST after the peer finished sending and we finished too is the
    // normal end of a close; anything earlier is a reset.
    const orderly = this.#state === "closing" ||
      ((this.#peerShut & SHUTDOWN_F.SEND) !== 0 && this.#writes.length === 0 &&
        this.#writeClosed);
    this.#pending = 0; // never answer an RST with an RST
    this.#end(
      orderly
        ? { reason: "closed", message: "closed" }
        : { reason: "ECONNRESET", message: "connection reset by peer" },
      orderly,
    );
  }

  #protocolError(message: string): void {
    this.#pending = P_RST;
    this.#schedule();
    this.#end({ reason: "EPROTO", message }, false);
  }

  #updatePeerCredit(h: PacketHeader): void {
    this.#peerBufAlloc = h.bufAlloc;
    this.#peerFwdCnt = h.fwdCnt;
    if (
      this.peerCredit > 0 &&
      (this.#writes.length > 0 || this.#source?.ready === true)
    ) {
      this.#schedule();
    }
  }

  // ---- packets out --------------------------------------------------------

  #fillHeader(h: PacketHeader): void {
    h.srcCid = this.#host.localCid;
    h.dstCid = this.peerCid;
    h.srcPort = this.localPort;
    h.dstPort = this.peerPort;
    h.type = this.type;
    h.flags = 0;
    h.bufAlloc = this.#bufAlloc;
    h.fwdCnt = this.#fwdCnt;
  }

  #sendControl(
    sink: PacketSink,
    h: PacketHeader,
    op: number,
    bit: number,
  ): number {
    h.op = op;
    if (!sink.send(h, EMPTY)) return 0;
    this.#pending &= ~bit;
    this.#sent(h);
    return 1;
  }

  /** Data may go out while established, and while closing (flushing before SHUTDOWN). */
  #canSendData(): boolean {
    return (this.#state === "established" || this.#state === "closing") &&
      (this.#writes.length > 0 || this.#source?.ready === true) &&
      (this.#peerShut & SHUTDOWN_F.RCV) === 0 &&
      (this.#localShut & SHUTDOWN_F.SEND) === 0;
  }

  #sendData(sink: PacketSink, h: PacketHeader): number {
    const w = this.#writes[0]!;
    const room = sink.room();
    const credit = this.peerCredit;
    const left = w.chunk.length - w.offset;
    const n = Math.min(left, credit, room);
    if (n <= 0 && left > 0) return 0;
    const last = n === left;
    h.op = OP.RW;
    if (this.type === TYPE.SEQPACKET && last) {
      h.flags = SEQ_F.EOM | (w.eor ? SEQ_F.EOR : 0);
    }
    if (!sink.send(h, w.chunk.subarray(w.offset, w.offset + n))) return 0;
    this.#txCnt = (this.#txCnt + n) >>> 0;
    this.stats.bytesOut += n;
    this.#sent(h);
    w.offset += n;
    if (last) {
      this.#writes.shift();
      w.resolve();
      if (this.#writes.length === 0) {
        if (this.#pending & P_SHUTDOWN) this.#schedule();
        if (this.#writeClosed) this.#maybeFinish();
      }
    }
    return 1;
  }

  /** Data read from the piped source straight into the sink's packets. */
  #sendPiped(sink: PacketSink, h: PacketHeader): number {
    const credit = this.peerCredit;
    if (credit <= 0) return 0;
    // No room() look first: with no buffers or space the sink plans no
    // packet and returns 0 without asking the source.
    h.op = OP.RW;
    let n: number;
    try {
      n = sink.sendFrom(h, credit, this.#source!);
    } catch (err) {
      // The source's failure is its owner's to judge (the bridge resets);
      // anything else is the sink's, and goes up to the runner.
      if (!(err instanceof SourceFailure)) throw err;
      this.#endPipe(err.cause);
      return 0;
    }
    if (n < 0) {
      // The source's end of input: ours too. Closing asks for SHUTDOWN (or
      // an RST): send it in this turn, or it could wait for the next one.
      this.#endPipe();
      this.#closeWrite();
      return this.produce(sink, h);
    }
    if (n === 0) return 0;
    this.#txCnt = (this.#txCnt + n) >>> 0;
    this.stats.bytesOut += n;
    this.#sent(h);
    return sink.filledPackets;
  }

  /** Forgets the piped source: its promise resolves, or rejects with `err`. */
  #endPipe(err?: unknown): void {
    const piped = this.#piped;
    if (piped === null) return;
    this.#source = null;
    this.#piped = null;
    if (err === undefined) piped.resolve();
    else piped.reject(err);
  }

  /** Every packet carries fwd_cnt, so any send is also a credit update. */
  #sent(h: PacketHeader): void {
    this.#lastSentFwdCnt = h.fwdCnt;
    this.#pending &= ~P_CREDIT_UPDATE;
    this.stats.lastActivity = Date.now();
  }

  #afterShutdownSent(): void {
    if (this.#state === "closing" && this.#timer === undefined) {
      this.#timer = setTimeout(() => {
        // The peer never answered our SHUTDOWN: end it ourselves.
        this.#pending = P_RST;
        this.#schedule();
        this.#end({
          reason: "closed",
          message: "closed (peer did not answer SHUTDOWN; sent RST)",
        }, true);
      }, this.#host.closeTimeoutMs);
    }
  }

  // ---- the application's side --------------------------------------------

  async #pull(
    controller: ReadableStreamDefaultController<Uint8Array>,
  ): Promise<void> {
    let chunk: Uint8Array | null;
    try {
      chunk = await this.read();
    } catch (err) {
      controller.error(err);
      return;
    }
    if (chunk === null) controller.close();
    else controller.enqueue(chunk);
  }

  #wakeReader(): void {
    const w = this.#readWaiter;
    this.#readWaiter = null;
    w?.();
  }

  /**
   * The application read `n` bytes. Return credit (Linux's rule) when the
   * space the peer believes it has left, `buf_alloc - (rx_cnt -
   * last fwd_cnt sent)`, has fallen below the threshold; until then the
   * credit rides on whatever packet we send next.
   */
  #consumed(n: number): void {
    this.#fwdCnt = (this.#fwdCnt + n) >>> 0;
    if (this.#fwdCnt === this.#lastSentFwdCnt) return;
    const believed = this.#bufAlloc -
      u32Diff(this.#rxCnt, this.#lastSentFwdCnt);
    if (believed < creditUpdateThreshold(this.#bufAlloc)) {
      if (!this.#readDone) {
        this.#bufAlloc = growBufAlloc(
          this.#bufAlloc,
          this.#host.bufAlloc,
          this.#recv.bytes,
        );
        this.#recv.limit = joinLimit(this.#bufAlloc);
      }
      this.#pending |= P_CREDIT_UPDATE;
      this.#schedule();
    }
  }

  #cancelRead(): void {
    this.#consumed(this.#recv.clear());
    this.#finishRead();
    if (this.#state === "established" && !(this.#localShut & SHUTDOWN_F.RCV)) {
      this.#requestShutdown(SHUTDOWN_F.RCV);
    }
  }

  /** The application is done reading (EOF delivered, cancelled, or close()). */
  #finishRead(): void {
    if (this.#readDone) return;
    this.#readDone = true;
    this.#wakeReader();
    this.#maybeFinish();
  }

  #write(chunk: Uint8Array): Promise<void> {
    if (this.#state === "closed") {
      return Promise.reject(this.#closedError());
    }
    if (this.#writeClosed || (this.#peerShut & SHUTDOWN_F.RCV)) {
      return Promise.reject(
        new VsockError("EPIPE", "the connection no longer sends"),
      );
    }
    if (this.type === TYPE.STREAM && chunk.length === 0) {
      return Promise.resolve();
    }
    if (
      this.type === TYPE.SEQPACKET && this.#peerBufAlloc > 0 &&
      chunk.length > this.#peerBufAlloc
    ) {
      return Promise.reject(
        new VsockError(
          "EMSGSIZE",
          `message of ${chunk.length} bytes exceeds the peer's buffer of ${this.#peerBufAlloc}`,
        ),
      );
    }
    return new Promise((resolve, reject) => {
      this.#writes.push({
        chunk,
        offset: 0,
        eor: chunk instanceof VsockMessage && chunk.eor,
        resolve,
        reject,
      });
      this.#schedule();
    });
  }

  #closeWrite(): void {
    if (this.#writeClosed) return;
    // Closing ends a pipe too: what its source has not given stays there.
    this.#endPipe();
    this.#writeClosed = true;
    // With nothing queued and input already over, this ends the connection:
    // #maybeFinish sends one SHUTDOWN(both), or the RST a full peer shutdown
    // gets. Asking for SHUTDOWN(SEND) first would put that out on its own
    // (a write outside a turn goes into the ring at once), one packet more.
    const ending = this.#writes.length === 0 && this.#inputDone();
    if (this.#state === "established" && !ending) {
      this.#requestShutdown(SHUTDOWN_F.SEND);
    }
    this.#maybeFinish();
  }

  #requestShutdown(bits: number): void {
    this.#wantShut |= bits;
    this.#pending |= P_SHUTDOWN;
    this.#schedule();
  }

  /**
   * Input is over when the application stopped reading, or when the peer
   * sent its last byte (SHUTDOWN SEND) and all of it has been read: no
   * more can arrive, whether or not the application has pulled the EOF yet.
   */
  #inputDone(): boolean {
    return this.#readDone ||
      ((this.#peerShut & SHUTDOWN_F.SEND) !== 0 && this.#recv.bytes === 0);
  }

  /** When both directions are done, close; answer a peer's full shutdown with RST. */
  #maybeFinish(): void {
    if (this.#state !== "established") return;
    const peerDone = (this.#peerShut & (SHUTDOWN_F.RCV | SHUTDOWN_F.SEND)) ===
      (SHUTDOWN_F.RCV | SHUTDOWN_F.SEND);
    const writesDone = this.#writeClosed && this.#writes.length === 0;
    if (!writesDone || !this.#inputDone()) return;
    if (peerDone) {
      // Linux: a full peer shutdown with nothing left unread gets RST.
      this.#pending = P_RST;
      this.#schedule();
      this.#end({ reason: "closed", message: "closed by peer" }, true);
      return;
    }
    this.#startClosing();
  }

  #startClosing(): void {
    if (this.#state !== "established") return;
    const peerDone = (this.#peerShut & (SHUTDOWN_F.RCV | SHUTDOWN_F.SEND)) ===
      (SHUTDOWN_F.RCV | SHUTDOWN_F.SEND);
    if (peerDone) {
      this.#pending = P_RST;
      this.#schedule();
      this.#end({ reason: "closed", message: "closed" }, true);
      return;
    }
    this.#state = "closing";
    this.#requestShutdown(SHUTDOWN_F.RCV | SHUTDOWN_F.SEND);
  }

  // ---- ending -------------------------------------------------------------

  /**
   * Nothing more can be sent: fail queued writes and error the writable at
   * once, so that a pipe into it (from a TCP socket that is quiet right
   * now) learns it should stop instead of waiting for its next chunk.
   */
  #stopWriting(makeError: () => unknown): void {
    let error: unknown;
    const err = () => (error ??= makeError());
    const writes = this.#writes;
    this.#writes = [];
    for (const w of writes) w.reject(err());
    if (this.#piped !== null) this.#endPipe(err());
    if (this.#writeStopError === null && !this.#writeClosed) {
      this.#writeStopError = err;
      this.#writableController?.error(err());
      this.#writeStopped?.resolve();
    }
  }

  #closedError(): VsockError {
    const info = this.#closeInfo;
    return info === null || info.reason === "closed"
      ? new VsockError("EPIPE", "the connection is closed")
      : new VsockError(info.reason, info.message);
  }

  /**
   * Moves to `closed`. `orderly` keeps already received data readable to
   * its end; otherwise the streams error. A pending RST is still sent: the
   * engine keeps the connection until `produce()` has sent it.
   */
  #end(info: CloseInfo, orderly: boolean): void {
    if (this.#state === "closed") return;
    this.#state = "closed";
    this.#closeInfo = info;
    clearTimeout(this.#timer);
    this.#timer = undefined;
    // A connect() still waiting learns why, whichever path ended it.
    const connecting = this.#onEstablished;
    this.#onEstablished = null;
    if (connecting !== null) {
      connecting(
        new VsockError(
          info.reason === "closed" ? "ECONNABORTED" : info.reason,
          info.message,
        ),
      );
    }
    this.#stopWriting(() => this.#closedError());
    if (!orderly) this.#recv.clear();
    this.#wakeReader();
    this.#resolveClosed(info);
    this.#host.release(this);
  }

  #schedule(): void {
    this.#host.schedule(this);
  }
}
