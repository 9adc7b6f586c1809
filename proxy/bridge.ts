/**
 * Joins a vsock connection to a socket (a TCP or UNIX connection), both
 * ways, keeping each direction's backpressure, half-close and resets:
 *
 * - socket -> vsock: the socket is read only when the guest has credit
 *   for the bytes (and, for the data plane's own sockets, the ring has room
 *   for them, since they are read straight into it); a socket of another
 *   kind, only once the previous chunk was sent: no credit, no reading.
 * - vsock -> socket: the vsock connection is read only when the socket took
 *   the previous chunk, and unread vsock data withholds credit.
 * - the end of one side's input (FIN, vsock SHUTDOWN(SEND)) closes the other
 *   side's output (SHUTDOWN(SEND), FIN); the other direction goes on.
 * - an error on either side (a socket reset, a vsock RST) ends the other: a
 *   vsock RST closes the socket at once, a socket reset sends RST.
 *
 * Bytes move by two plain loops over `VsockConnection.read()`/`write()` and
 * the socket's reads and writes, not by Web Streams and `pipeTo`: their
 * closures and promises were most of the sidecar's memory per idle
 * connection (docs/performance.md). A socket of the data plane's own
 * (`FdConn`) is not read by a loop but pulled by the connection: it reads
 * the socket straight into the ring's packet buffers when it has credit
 * and ring space (`VsockConnection.pipeFrom`), which saves copying every
 * byte once.
 *
 * @module
 */

import type { Region } from "../device/shm/region.ts";
import type { SegmentList } from "../device/virtqueue/segments.ts";
import type {
  PipeSource,
  VsockConnection,
} from "../device/vsock/connection.ts";
import { TYPE } from "../device/packets/header.ts";
import { VsockError } from "../device/vsock/errors.ts";
import { FdConn } from "./fd_socket.ts";
import { recycleChunk } from "../device/vsock/chunk_pool.ts";
import {
  type ByteSocket,
  ChunkReader,
  closeQuietly,
  writeAll,
} from "./tcp_streams.ts";

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

/** Starts moving bytes between `conn` and `socket`. */
export function bridge(
  conn: VsockConnection,
  socket: ByteSocket,
  options: BridgeOptions = {},
): Bridge {
  let outcome: BridgeOutcome | null = null;
  const decide = (o: BridgeOutcome) => {
    outcome ??= o;
  };
  /** How the vsock side's failure counts: the guest's doing, or ours. */
  const vsockFailure = (): BridgeOutcome => {
    const reason = conn.closeInfo?.reason;
    return reason === "ECONNRESET" || reason === "EPROTO"
      ? "reset-by-guest"
      : "reset-by-peer";
  };
  /** How sending's failure counts: only a guest reset is the guest's. */
  const sendFailure = (): BridgeOutcome =>
    conn.closeInfo?.reason === "ECONNRESET"
      ? "reset-by-guest"
      : "reset-by-peer";
  let socketClosed = false;
  const closeSocket = () => {
    if (socketClosed) return;
    socketClosed = true;
    closeQuietly(socket);
  };

  const sending = socket instanceof FdConn && conn.type === TYPE.STREAM
    ? pull(conn, socket).catch((err) => {
      if (err instanceof VsockError) {
        // The connection stopped sending (writeStopped tells the same).
        decide(sendFailure());
      } else if (!socketClosed) {
        // The socket failed (a reset), not because we closed it.
        decide("reset-by-peer");
        conn.reset("writer aborted: the socket failed");
      }
    })
    : readLoop();
  async function readLoop(): Promise<void> {
    const reader = new ChunkReader(socket);
    for (;;) {
      // A view of the reader's buffer: `conn.write()` resolves only once
      // the bytes are copied into the ring, before the next read reuses it.
      let chunk: Uint8Array | null;
      try {
        chunk = await reader.readView();
      } catch {
        // The socket failed (a reset), or we closed it because the vsock
        // side failed first.
        if (!socketClosed) {
          decide("reset-by-peer");
          conn.reset("writer aborted: the socket failed");
        }
        return;
      }
      if (chunk === null) {
        conn.closeWrite();
        return;
      }
      try {
        await conn.write(chunk);
      } catch {
        decide(sendFailure());
        return;
      }
    }
  }
  // Sending may stop while the socket is quiet (the guest shut down
  // receiving, or reset): this direction is over then, whatever the pending
  // read does later (it ends when the socket is closed).
  const toGuest = Promise.race([
    sending,
    conn.writeStopped.then(() => decide(sendFailure())),
  ]);

  const fromGuest = (async () => {
    for (;;) {
      let chunk: Uint8Array | null;
      try {
        chunk = await conn.read();
      } catch {
        // The guest reset (or broke the protocol): close the socket now,
        // which also ends a read pending in the other direction.
        decide(vsockFailure());
        closeSocket();
        return;
      }
      if (chunk === null) {
        try {
          await socket.closeWrite();
        } catch {
          // Already closed by the other direction: nothing left to finish.
        }
        return;
      }
      try {
        await writeAll(socket, chunk);
        // The socket has copied it: the next packets can use its buffer.
        recycleChunk(chunk);
      } catch {
        // The socket could not take the bytes: it reset or went away. Stop
        // reading, and send RST rather than only SHUTDOWN(RCV): otherwise
        // the guest's reads would end in a plain EOF, and the guest would
        // take the cut for a graceful close.
        const byGuest = vsockFailure() === "reset-by-guest";
        const first = outcome === null;
        decide(byGuest ? "reset-by-guest" : "reset-by-peer");
        conn.cancelRead();
        if (first && !byGuest) conn.reset("the other side failed");
        return;
      }
    }
  })();

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
    closeSocket();
  };

  const done = Promise.all([toGuest, fromGuest]).then(async () => {
    clearInterval(idleTimer);
    closeSocket();
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
      closeSocket();
    },
  };
}

/**
 * Has `conn` pull `socket`'s bytes straight into its packets; settles as
 * `pipeFrom` does. The socket's readiness wakes the connection.
 */
function pull(conn: VsockConnection, socket: FdConn): Promise<void> {
  const source: PipeSource & { ready: boolean } = {
    ready: true,
    fill(region: Region, dest: SegmentList): number | null {
      const n = socket.recvInto(region, dest);
      if (n !== undefined) return n;
      source.ready = false;
      socket.whenReadable().then(() => {
        source.ready = true;
        try {
          // This may transmit at once; a failure there must end this
          // connection, not the process (an unhandled rejection).
          conn.sourceReady(source);
        } catch (err) {
          conn.unpipe(source, err);
        }
      }, (err) => conn.unpipe(source, err));
      return 0;
    },
  };
  return conn.pipeFrom(source);
}
