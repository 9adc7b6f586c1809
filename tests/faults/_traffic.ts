/**
 * Checked traffic for the fault tests: services that answer checked
 * transfers (and remember how each ended) and clients that run them, with
 * progress so a test can strike mid-stream.
 *
 * @module
 */

import { createServer, type Socket } from "node:net";
import {
  connChannel,
  type Outcome,
  Pattern,
  runClient,
  runService,
  socketChannel,
  type TransferSpec,
} from "../_support/checked_transfer.ts";
import { waitUntil } from "../_support/process_stack.ts";

/** The pattern every fault test cuts its streams from. */
export const PATTERN = new Pattern(20261124, 1 << 20);

/** A loopback service answering checked transfers. */
export interface CheckedService {
  port: number;
  /** How each session ended, in the order they ended. */
  results: Array<{ spec: TransferSpec | null; outcome: Outcome }>;
  /** Sessions still open. */
  readonly open: number;
  close(): Promise<void>;
}

/**
 * Starts a checked service on `port` (0: any free port). It uses
 * `node:net`, so a reset the client asks for is a real RST.
 */
export async function checkedService(
  port = 0,
  stallMs = 20_000,
): Promise<CheckedService> {
  let open = 0;
  const results: CheckedService["results"] = [];
  const sockets = new Set<Socket>();
  const sessions = new Set<Promise<void>>();
  const server = createServer((socket) => {
    sockets.add(socket);
    open++;
    const s = runService(socketChannel(socket), PATTERN, { stallMs }).then(
      (r) => void results.push(r),
    ).finally(() => {
      open--;
      sockets.delete(socket);
      sessions.delete(s);
    });
    sessions.add(s);
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, "127.0.0.1", () => resolve());
  });
  return {
    port: (server.address() as { port: number }).port,
    results,
    get open() {
      return open;
    },
    async close() {
      const closed = new Promise<void>((r) => server.close(() => r()));
      for (const socket of sockets) socket.destroy();
      await Promise.allSettled([...sessions]);
      await closed;
    },
  };
}

/** A client transfer under way. */
export interface Running {
  spec: TransferSpec;
  /** Bytes moved so far, both ways. */
  readonly moved: number;
  outcome: Promise<Outcome>;
}

let nextId = 1;

/** A spec for `up` and `down` bytes, optionally reset by the service. */
export function spec(
  up: number,
  down: number,
  serviceResetAt: number | null = null,
): TransferSpec {
  const id = nextId++;
  return {
    id,
    up,
    down,
    upAt: id * 7919,
    downAt: id * 104729,
    serviceResetAt,
  };
}

/** Connects to 127.0.0.1:`port` and runs `s`; a failed connect is `ended`. */
export function startClient(
  port: number,
  s: TransferSpec,
  options: { resetAt?: number; stallMs?: number } = {},
): Running {
  let moved = 0;
  const outcome = (async (): Promise<Outcome> => {
    let conn: Deno.TcpConn;
    try {
      conn = await Deno.connect({ hostname: "127.0.0.1", port });
    } catch (err) {
      return {
        kind: "ended",
        detail: `connect: ${err instanceof Error ? err.message : err}`,
        bytesIn: 0,
        bytesOut: 0,
      };
    }
    return await runClient(connChannel(conn), s, PATTERN, {
      resetAt: options.resetAt ?? null,
      stallMs: options.stallMs ?? 20_000,
      onBytes: (n) => (moved += n),
    });
  })();
  return {
    spec: s,
    get moved() {
      return moved;
    },
    outcome,
  };
}

/** Waits until every transfer in `running` has moved at least `bytes`. */
export async function waitMoved(
  running: Running[],
  bytes: number,
  timeoutMs = 15_000,
): Promise<void> {
  await waitUntil(
    () => running.every((r) => r.moved >= bytes),
    timeoutMs,
    () =>
      `every transfer to move ${bytes} bytes; moved: ${
        running.map((r) => r.moved).join(", ")
      }`,
  );
}

/** Outcome kinds, for assertEquals. */
export async function kinds(running: Running[]): Promise<string[]> {
  return (await Promise.all(running.map((r) => r.outcome))).map((o) => o.kind);
}
