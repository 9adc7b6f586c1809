/**
 * One proxied connection as the admin API lists it: which route, which
 * ports and remote address, its state, and bytes each way.
 *
 * @module
 */

import type { VsockConnection } from "../device/vsock/connection.ts";
import type { BridgeOutcome } from "./bridge.ts";

/** Which way the connection was opened. */
export type Direction =
  | "host-to-guest"
  | "guest-to-host"
  | "websocket-to-guest";

/** A JSON-friendly view of a connection. */
export interface ConnectionInfo {
  id: string;
  route: string;
  direction: Direction;
  /** vsock ports: ours (CID 2) and the guest's. */
  vsock: { localPort: number; guestPort: number };
  /** The TCP or WebSocket peer, `host:port`. */
  remote: string;
  state: "connecting" | "open" | "closing" | "closed";
  bytesToGuest: number;
  bytesFromGuest: number;
  /** Milliseconds since the connection was accepted. */
  ageMs: number;
  /** ISO time of the last byte either way. */
  lastActivity: string;
}

let nextId = 1;

/** A live proxied connection. */
export class ProxyConnection {
  readonly id: string = `c${nextId++}`;
  readonly route: string;
  readonly direction: Direction;
  readonly remote: string;
  readonly createdAt = Date.now();
  vsock: VsockConnection | null = null;
  outcome: BridgeOutcome | null = null;
  #close: (() => void) | null = null;
  #reset: (() => void) | null = null;
  #cancel: (() => void) | null = null;
  #cancelled = false;

  constructor(route: string, direction: Direction, remote: string) {
    this.route = route;
    this.direction = direction;
    this.remote = remote;
  }

  /** True once closed or reset before the connection was bridged. */
  get cancelled(): boolean {
    return this.#cancelled;
  }

  /**
   * What close() and reset() do while the far side is still being reached:
   * give up (close the client side); the route sees `cancelled` when the
   * connect completes.
   */
  whileConnecting(cancel: () => void): void {
    this.#cancel = cancel;
  }

  /** Sets how {@linkcode close} and {@linkcode reset} act, once bridged. */
  bind(vsock: VsockConnection, close: () => void, reset: () => void): void {
    this.vsock = vsock;
    this.#close = close;
    this.#reset = reset;
  }

  /** Graceful close of both sides (while connecting: give up). */
  close(): void {
    if (this.#close === null) this.#giveUp();
    else this.#close();
  }

  /** RST to the guest; the other side is closed at once (while connecting: give up). */
  reset(): void {
    if (this.#reset === null) this.#giveUp();
    else this.#reset();
  }

  #giveUp(): void {
    if (this.#cancelled) return;
    this.#cancelled = true;
    this.#cancel?.();
  }

  info(): ConnectionInfo {
    const v = this.vsock;
    const state = this.outcome !== null
      ? "closed"
      : v === null
      ? "connecting"
      : v.state === "established"
      ? "open"
      : v.state === "closed"
      ? "closing"
      : v.state === "closing"
      ? "closing"
      : "connecting";
    return {
      id: this.id,
      route: this.route,
      direction: this.direction,
      vsock: { localPort: v?.localPort ?? 0, guestPort: v?.peerPort ?? 0 },
      remote: this.remote,
      state,
      bytesToGuest: v?.stats.bytesOut ?? 0,
      bytesFromGuest: v?.stats.bytesIn ?? 0,
      ageMs: Date.now() - this.createdAt,
      lastActivity: new Date(v?.stats.lastActivity ?? this.createdAt)
        .toISOString(),
    };
  }
}
