/**
 * Helpers for the admin API tests: a sidecar with a guest echo service, a
 * sidecar with no guest at all, JSON requests through the Hono app, and
 * bounded waits on TCP clients.
 *
 * @module
 */

import { assertEquals } from "../../dev_deps.ts";
import { adminApp } from "../../admin/app.ts";
import { parseConfig } from "../../config/load.ts";
import type { RouteInput } from "../../config/schema.ts";
import { Sidecar } from "../../proxy/sidecar.ts";
import type { Hono } from "../../deps.ts";
import { type SidecarPair, sidecarPair } from "../_support/sidecar_pair.ts";
import { echoServer, type TestServer } from "../_support/tcp_servers.ts";
import { within } from "../_support/within.ts";

/** The guest vsock port where the echo service is exposed. */
export const ECHO_PORT = 80;

/** A host TCP route to the guest's echo service. */
export function echoRoute(name: string, port = 0): RouteInput {
  return {
    name,
    from: { type: "tcp", port },
    to: { type: "vsock", port: ECHO_PORT },
  };
}

/** A sidecar and guest whose vsock port 80 echoes, with the admin app. */
export interface EchoPair {
  pair: SidecarPair;
  app: Hono;
  service: TestServer;
  stop(): Promise<void>;
}

/** Starts a pair with `routes` and a guest echo service on port 80. */
export async function echoPair(
  routes: RouteInput[] = [],
  o: { driverTimeoutMs?: number; service?: TestServer } = {},
): Promise<EchoPair> {
  const service = o.service ?? echoServer();
  let pair: SidecarPair;
  try {
    pair = await sidecarPair({
      routes,
      exposes: [{
        port: ECHO_PORT,
        target: { kind: "tcp", host: "127.0.0.1", port: service.port },
      }],
      ...(o.driverTimeoutMs === undefined
        ? {}
        : { driverTimeoutMs: o.driverTimeoutMs }),
    });
  } catch (err) {
    await service.close();
    throw err;
  }
  return {
    pair,
    app: adminApp(pair.sidecar),
    service,
    async stop() {
      await pair.stop();
      await service.close();
    },
  };
}

let lone = 0;

/** A sidecar with no guest driver on its region (state "waiting"). */
export async function loneSidecar(routes: RouteInput[] = []): Promise<Sidecar> {
  const config = parseConfig({
    device: {
      region: `/dev/shm/ivsock-test-admin-${Deno.pid}-${lone++}`,
      size: "4MiB",
    },
    routes,
    admin: false,
    shutdownGraceMs: 0,
  });
  return await Sidecar.start(config, () => {});
}

/** A JSON answer of the admin app. */
export interface Answer {
  status: number;
  headers: Headers;
  // deno-lint-ignore no-explicit-any
  body: any;
}

/**
 * Sends `method path` to `app`; `body` is sent as is when a string, as
 * JSON otherwise. The response body is always read (parsed when JSON).
 */
export async function call(
  app: Hono,
  method: string,
  path: string,
  body?: unknown,
  headers: Record<string, string> = {},
): Promise<Answer> {
  const init: RequestInit = { method, headers: { ...headers } };
  if (body !== undefined) {
    init.body = typeof body === "string" ? body : JSON.stringify(body);
    (init.headers as Record<string, string>)["content-type"] ??=
      "application/json";
  }
  const res = await app.request(path, init);
  const text = await res.text();
  const type = res.headers.get("content-type") ?? "";
  return {
    status: res.status,
    headers: res.headers,
    body: type.startsWith("application/json") ? JSON.parse(text) : text,
  };
}

/** Connects to a loopback port. */
export function open(port: number): Promise<Deno.TcpConn> {
  return Deno.connect({ hostname: "127.0.0.1", port });
}

export { within };

/** Writes `data` and reads the same number of bytes back; checks them. */
export async function roundTrip(
  conn: Deno.Conn,
  data: Uint8Array,
  ms = 5000,
): Promise<void> {
  await within(
    (async () => {
      let at = 0;
      while (at < data.length) at += await conn.write(data.subarray(at));
      const back = new Uint8Array(data.length);
      let got = 0;
      while (got < back.length) {
        const n = await conn.read(back.subarray(got));
        if (n === null) throw new Error(`EOF after ${got} of ${back.length}`);
        got += n;
      }
      assertEquals(back, data, "the echo matches what was sent");
    })(),
    ms,
    `echo of ${data.length} bytes`,
  );
}

/** `n` bytes of a recognisable pattern. */
export function pattern(n: number, seed = 1): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = (i * 31 + seed) & 0xff;
  return out;
}

/**
 * Reads until the connection ends: "eof" for a clean end, "error" for a
 * reset. Throws when it has not ended within `ms`.
 */
export function readEnd(conn: Deno.Conn, ms = 5000): Promise<"eof" | "error"> {
  return within(
    (async () => {
      const buf = new Uint8Array(65536);
      try {
        while ((await conn.read(buf)) !== null) { /* discard */ }
        return "eof" as const;
      } catch {
        return "error" as const;
      }
    })(),
    ms,
    "the connection to end",
  );
}

/**
 * What happens to a new connection on `port`: "refused" when nothing
 * listens, "closed" when it is accepted and closed without a byte, "open"
 * when the echo works.
 */
export async function probe(
  port: number,
  ms = 5000,
): Promise<"refused" | "closed" | "open"> {
  let conn: Deno.TcpConn;
  try {
    conn = await open(port);
  } catch (err) {
    if (err instanceof Deno.errors.ConnectionRefused) return "refused";
    throw err;
  }
  try {
    return await within(
      (async () => {
        try {
          await conn.write(new Uint8Array([42]));
          const buf = new Uint8Array(1);
          const n = await conn.read(buf);
          return n === 1 && buf[0] === 42 ? "open" as const : "closed" as const;
        } catch {
          return "closed" as const;
        }
      })(),
      ms,
      `a probe of port ${port}`,
    );
  } finally {
    conn.close();
  }
}

/** Polls `cond` every 5 ms until it holds; throws after `ms`. */
export async function waitFor(
  cond: () => boolean | Promise<boolean>,
  what: string,
  ms = 5000,
): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting: ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** A port nothing listens on right now. */
export function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

/** The port part of a route's `listening` (`127.0.0.1:1234`). */
export function portOf(listening: string): number {
  return Number(listening.split(":").pop());
}
