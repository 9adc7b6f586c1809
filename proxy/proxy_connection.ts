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
  #close: () => void = () => {};
  #reset: () => void = () => {};

  constructor(route: string, direction: Direction, remote: string) {
    this.route = route;
    this.direction = direction;
    this.remote = remote;
  }

  /** Sets how {@linkcode close} and {@linkcode reset} act, once bridged. */
  bind(vsock: VsockConnection, close: () => void, reset: () => void): void {
    this.vsock = vsock;
    this.#close = close;
    this.#reset = reset;
  }

  /** Graceful close of both sides. */
  close(): void {
    this.#close();
  }

  /** RST to the guest; the other side is closed at once. */
  reset(): void {
    this.#reset();
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
