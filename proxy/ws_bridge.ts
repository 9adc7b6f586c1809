/**
 * Joins a WebSocket to a vsock connection.
 *
 * Binary frames carry the bytes; for a SEQPACKET route each WebSocket
 * message is one vsock message and back. A text frame closes the socket
 * with 1003 (unsupported data).
 *
 * Backpressure: towards the WebSocket, the vsock side is read only while
 * the socket's `bufferedAmount` is below a high-water mark, so a slow client
 * withholds vsock credit. Towards the guest, Deno's server WebSocket reads
 * frames as they arrive and cannot be paused, so messages wait in a bounded
 * buffer for vsock credit; a client that outruns the guest by more than
 * `maxBufferedBytes` is closed with 1008 and the vsock side reset, rather
 * than buffered without bound.
 *
 * Endings: a normal WebSocket close shuts down the vsock side's sending
 * after what is buffered; the guest's end of stream closes the socket with
 * 1000; a client that vanishes (1006) resets the vsock connection; a vsock
 * reset closes the socket with 1011.
 *
 * @module
 */

import type { VsockConnection } from "../device/vsock/connection.ts";
import type { BridgeOutcome } from "./bridge.ts";

/** WebSocket close codes used here (RFC 6455 section 7.4, IANA registry). */
export const WS_CLOSE = {
  NORMAL: 1000,
  GOING_AWAY: 1001,
  UNSUPPORTED_DATA: 1003,
  ABNORMAL: 1006,
  POLICY: 1008,
  INTERNAL: 1011,
  /** "Bad Gateway": the upstream (the guest port) could not be reached. */
  BAD_GATEWAY: 1014,
  /** What the receiver reports for a close frame without a code. */
  NO_STATUS: 1005,
} as const;

/**
 * A close the client meant: 1000, 1001, or a close frame without a code
 * (1005, what `ws.close()` with no arguments sends). Anything else, and 1006
 * above all (the connection just dropped), is treated as a reset.
 */
function orderlyClose(code: number): boolean {
  return code === WS_CLOSE.NORMAL || code === WS_CLOSE.GOING_AWAY ||
    code === WS_CLOSE.NO_STATUS;
}

/** Options of {@linkcode WebSocketBridge}. */
export interface WebSocketBridgeOptions {
  /** Bytes from the client waiting for vsock credit before we give up. @default {4 MiB} */
  maxBufferedBytes?: number;
  /** Stop reading from the guest while this much waits in the socket. @default {1 MiB} */
  highWaterMark?: number;
  /** Close after this long without a byte either way; 0 = never. */
  idleTimeoutMs?: number;
}

/** Polling interval while waiting for the socket to drain (Deno has no drain event). */
const DRAIN_POLL_MS = 5;

/** One WebSocket joined (eventually) to one vsock connection. */
export class WebSocketBridge {
  readonly socket: WebSocket;
  readonly done: Promise<BridgeOutcome>;
  #resolve!: (o: BridgeOutcome) => void;
  #outcome: BridgeOutcome | null = null;
  #conn: VsockConnection | null = null;
  #writer: WritableStreamDefaultWriter<Uint8Array> | null = null;
  #inbound: Uint8Array[] = [];
  #inboundBytes = 0;
  #writing = false;
  #clientClosed: number | null = null;
  #maxBuffered: number;
  #high: number;
  #idleMs: number;
  #idleTimer: ReturnType<typeof setInterval> | undefined;
  #finished = false;

  constructor(socket: WebSocket, options: WebSocketBridgeOptions = {}) {
    this.socket = socket;
    socket.binaryType = "arraybuffer";
    this.#maxBuffered = options.maxBufferedBytes ?? 4 << 20;
    this.#high = options.highWaterMark ?? 1 << 20;
    this.#idleMs = options.idleTimeoutMs ?? 0;
    this.done = new Promise((r) => (this.#resolve = r));
  }

  /** The guest accepted: start moving bytes. */
  attach(conn: VsockConnection): void {
    this.#conn = conn;
    this.#writer = conn.writable.getWriter();
    if (this.#clientClosed !== null && !orderlyClose(this.#clientClosed)) {
      // The client left abnormally before the guest even answered: a reset,
      // whatever it sent before (delivering that and then nothing, neither
      // more data nor an end, would leave the guest waiting for ever).
      this.#decide("reset-by-peer");
      this.#inbound = [];
      this.#inboundBytes = 0;
      conn.reset("WebSocket client went away");
      this.#finish();
      return;
    }
    this.#pumpToGuest();
    this.#pumpToClient(conn);
    if (this.#idleMs > 0) {
      this.#idleTimer = setInterval(() => {
        if (Date.now() - conn.stats.lastActivity >= this.#idleMs) {
          this.#decide("idle-timeout");
          this.close();
        }
      }, Math.max(10, Math.min(1000, this.#idleMs / 4)));
    }
    conn.closed.then(() => this.#maybeFinish());
  }

  /** The guest could not be reached: tell the client and end. */
  fail(reason: string): void {
    this.#decide("reset-by-guest");
    this.#closeSocket(WS_CLOSE.BAD_GATEWAY, reason);
    this.#finish();
  }

  /** A frame from the client. */
  onMessage(data: unknown): void {
    if (typeof data === "string") {
      this.#decide("reset-by-peer");
      this.#closeSocket(
        WS_CLOSE.UNSUPPORTED_DATA,
        "text frames are not supported: send binary",
      );
      this.#conn?.reset("WebSocket client sent a text frame");
      return;
    }
    const bytes = data instanceof ArrayBuffer
      ? new Uint8Array(data)
      : ArrayBuffer.isView(data)
      ? new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
      : null;
    if (bytes === null) return;
    this.#inbound.push(bytes);
    this.#inboundBytes += bytes.length;
    if (this.#inboundBytes > this.#maxBuffered) {
      this.#decide("reset-by-peer");
      this.#closeSocket(
        WS_CLOSE.POLICY,
        `more than ${this.#maxBuffered} bytes waiting for the guest`,
      );
      this.#conn?.reset("WebSocket client outran the guest");
      this.#inbound = [];
      this.#inboundBytes = 0;
      return;
    }
    this.#pumpToGuest();
  }

  /** The client's close (or the socket dropping). */
  onClose(code: number): void {
    this.#clientClosed = code;
    const conn = this.#conn;
    if (conn === null) return;
    if (orderlyClose(code)) {
      // Orderly: finish sending what is buffered, then SHUTDOWN(SEND).
      this.#pumpToGuest();
    } else {
      this.#decide("reset-by-peer");
      conn.reset(`WebSocket closed with ${code}`);
    }
    this.#maybeFinish();
  }

  /** Graceful close from the administrator or the idle timer. */
  close(): void {
    this.#decide("closed-by-admin");
    this.#closeSocket(WS_CLOSE.GOING_AWAY, "closed by the proxy");
    this.#conn?.close();
  }

  /** Abrupt close: RST to the guest, close the socket. */
  reset(): void {
    this.#decide("reset-by-admin");
    this.#conn?.reset("reset by the administrator");
    this.#closeSocket(WS_CLOSE.GOING_AWAY, "reset by the proxy");
  }

  async #pumpToGuest(): Promise<void> {
    const w = this.#writer;
    if (w === null || this.#writing) return;
    this.#writing = true;
    try {
      while (this.#inbound.length > 0) {
        const chunk = this.#inbound[0]!;
        await w.write(chunk);
        this.#inbound.shift();
        this.#inboundBytes -= chunk.length;
      }
      if (this.#clientClosed !== null && orderlyClose(this.#clientClosed)) {
        await w.close();
      }
    } catch {
      // The vsock side ended; #pumpToClient reports how.
    } finally {
      this.#writing = false;
    }
  }

  async #pumpToClient(conn: VsockConnection): Promise<void> {
    const reader = conn.readable.getReader();
    try {
      for (;;) {
        while (
          this.socket.bufferedAmount > this.#high &&
          this.socket.readyState === WebSocket.OPEN
        ) {
          await new Promise((r) => setTimeout(r, DRAIN_POLL_MS));
        }
        if (this.socket.readyState !== WebSocket.OPEN) {
          await reader.cancel();
          break;
        }
        const { value, done } = await reader.read();
        if (done) {
          this.#closeSocket(WS_CLOSE.NORMAL, "the guest closed the connection");
          break;
        }
        if (this.socket.readyState === WebSocket.OPEN) this.socket.send(value);
      }
    } catch {
      const reason = conn.closeInfo?.reason;
      if (reason !== undefined && reason !== "closed") {
        this.#decide(
          reason === "ECONNRESET" ? "reset-by-guest" : "reset-by-peer",
        );
        this.#closeSocket(
          WS_CLOSE.INTERNAL,
          `the guest connection ended: ${reason}`,
        );
      }
    }
    this.#maybeFinish();
  }

  #closeSocket(code: number, reason: string): void {
    const s = this.socket;
    if (
      s.readyState === WebSocket.CONNECTING || s.readyState === WebSocket.OPEN
    ) {
      try {
        s.close(code, reason.slice(0, 120)); // a close reason must fit 123 bytes
      } catch {
        // Already closing.
      }
    }
  }

  #decide(o: BridgeOutcome): void {
    this.#outcome ??= o;
  }

  #maybeFinish(): void {
    const conn = this.#conn;
    if (conn === null || conn.state !== "closed") return;
    if (
      this.socket.readyState !== WebSocket.CLOSED && this.#clientClosed === null
    ) {
      // The vsock side is over; make sure the socket follows.
      this.#closeSocket(WS_CLOSE.NORMAL, "the guest closed the connection");
      return;
    }
    this.#finish();
  }

  #finish(): void {
    if (this.#finished) return;
    this.#finished = true;
    clearInterval(this.#idleTimer);
    this.#resolve(this.#outcome ?? "closed");
  }
}
