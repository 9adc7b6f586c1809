/**
 * Joins a vsock connection to another byte stream (a TCP connection), both
 * ways, keeping each direction's backpressure, half-close and resets:
 *
 * - other -> vsock: `pipeTo` only reads the other side when the vsock
 *   writable has taken the previous chunk, which it does only within the
 *   guest's credit: no credit, no reading.
 * - vsock -> other: the vsock readable is pulled only when the other side
 *   accepted the previous chunk, and unread vsock data withholds credit.
 * - the end of one side's input (TCP FIN, vsock SHUTDOWN(SEND)) closes the
 *   other side's output (SHUTDOWN(SEND), FIN); the other direction goes on.
 * - an error on either side (TCP reset, vsock RST) aborts the other: a vsock
 *   RST closes the TCP connection at once, a TCP reset sends RST.
 *
 * @module
 */

import type { VsockConnection } from "../device/vsock/connection.ts";

/** The non-vsock side of a bridge. */
export interface Peer {
  readable: ReadableStream<Uint8Array>;
  writable: WritableStream<Uint8Array>;
  /** Closes the underlying resource (called once both directions are done). */
  close(): void;
}

/** How a bridged connection ended. */
export type BridgeOutcome =
  | "closed"
  | "reset-by-guest"
  | "reset-by-peer"
  | "idle-timeout"
  | "closed-by-admin"
  | "reset-by-admin";

/** A running bridge. */
export interface Bridge {
  /** Settles when both directions are done and both resources closed. */
  done: Promise<BridgeOutcome>;
  /** Graceful close: finish sending what is queued, then close both sides. */
  close(): void;
  /** Abrupt close: RST to the guest, close the other side now. */
  reset(): void;
}

/** Options of {@linkcode bridge}. */
export interface BridgeOptions {
  /** Close when neither side has moved a byte for this long; 0 = never. */
  idleTimeoutMs?: number;
}

/** Starts moving bytes between `conn` and `peer`. */
export function bridge(
  conn: VsockConnection,
  peer: Peer,
  options: BridgeOptions = {},
): Bridge {
  let outcome: BridgeOutcome | null = null;
  const decide = (o: BridgeOutcome) => {
    outcome ??= o;
  };
  const toGuest = peer.readable.pipeTo(conn.writable).then(
    () => {},
    () =>
      decide(
        conn.closeInfo?.reason === "ECONNRESET"
          ? "reset-by-guest"
          : "reset-by-peer",
      ),
  );
  const fromGuest = conn.readable.pipeTo(peer.writable).then(
    () => {},
    () => {
      const reason = conn.closeInfo?.reason;
      const byGuest = reason === "ECONNRESET" || reason === "EPROTO";
      const first = outcome === null;
      decide(byGuest ? "reset-by-guest" : "reset-by-peer");
      // The other side could not take the bytes: it reset or went away.
      // Cancelling the readable (what pipeTo does) would only send
      // SHUTDOWN(RCV), and the other side's reads, its reset already
      // reported to the failed write, would then end in a plain EOF: the
      // guest would see a graceful close. Send RST instead.
      if (first && !byGuest) conn.reset("the other side failed");
    },
  );

  let idleTimer: ReturnType<typeof setInterval> | undefined;
  const idle = options.idleTimeoutMs ?? 0;
  if (idle > 0) {
    idleTimer = setInterval(() => {
      if (Date.now() - conn.stats.lastActivity >= idle) {
        decide("idle-timeout");
        shutdown();
      }
    }, Math.max(10, Math.min(1000, idle / 4)));
  }

  let shutDown = false;
  const shutdown = () => {
    if (shutDown) return;
    shutDown = true;
    conn.close();
    peer.close();
  };

  const done = Promise.all([toGuest, fromGuest]).then(async () => {
    clearInterval(idleTimer);
    peer.close();
    if (conn.state !== "closed") {
      // Both directions finished; the vsock close completes with the
      // guest's RST (or our own after the close timeout).
      conn.close();
    }
    await conn.closed;
    return outcome ?? "closed";
  });

  return {
    done,
    close() {
      decide("closed-by-admin");
      shutdown();
    },
    reset() {
      decide("reset-by-admin");
      conn.reset("reset by the administrator");
      peer.close();
    },
  };
}
