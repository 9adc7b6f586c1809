/**
 * The demo's services "inside the guest", on UNIX sockets in a private
 * directory so that nothing on the host network reaches them except through
 * vsock:
 *
 * - an HTTP site (`/` and `/info`);
 * - echo: writes back what it reads, keeping half-close;
 * - sink: reads to the end, then answers with the SHA-256 (hex) of what it
 *   read: checks the host-to-guest direction at the guest;
 * - source: reads a decimal byte count and a newline, then sends that many
 *   random bytes followed by their 32-byte SHA-256: checks the
 *   guest-to-host direction at the host.
 *
 * @module
 */

import { createHash } from "node:crypto";

/** Running demo services and where they listen. */
export interface DemoServices {
  httpSocket: string;
  echoSocket: string;
  sinkSocket: string;
  sourceSocket: string;
  close(): Promise<void>;
}

/** Largest count the source service accepts (1 GiB). */
const MAX_SOURCE_BYTES = 1 << 30;

/** Starts every service in `dir`. */
export function startDemoServices(
  dir: string,
  guestInfo: () => Record<string, unknown>,
): DemoServices {
  const httpSocket = `${dir}/http.sock`;
  const abort = new AbortController();
  const http = Deno.serve({
    path: httpSocket,
    signal: abort.signal,
    onListen() {},
  }, (req) => {
    const url = new URL(req.url);
    if (url.pathname === "/info") return Response.json(guestInfo());
    return new Response(
      `Hello from inside the guest!\n\nThis page is served by an HTTP server in the guest, reached only over\nvirtio-vsock through ivsock's shared-memory device. Try /info.\n`,
      { headers: { "content-type": "text/plain; charset=utf-8" } },
    );
  });
  const servers = [
    unixService(`${dir}/echo.sock`, echoSession),
    unixService(`${dir}/sink.sock`, sinkSession),
    unixService(`${dir}/source.sock`, sourceSession),
  ];
  return {
    httpSocket,
    echoSocket: servers[0]!.path,
    sinkSocket: servers[1]!.path,
    sourceSocket: servers[2]!.path,
    async close() {
      abort.abort();
      await Promise.all(servers.map((s) => s.close()));
      await http.finished;
    },
  };
}

/** A UNIX-socket server running `session` per connection. */
function unixService(
  path: string,
  session: (conn: Deno.UnixConn) => Promise<void>,
) {
  const listener = Deno.listen({ transport: "unix", path });
  const sessions = new Set<Promise<void>>();
  const loop = (async () => {
    try {
      for await (const conn of listener) {
        const s = session(conn).catch(() => {}).finally(() => {
          closeQuietly(conn);
          sessions.delete(s);
        });
        sessions.add(s);
      }
    } catch {
      // Closed.
    }
  })();
  return {
    path,
    async close() {
      listener.close();
      await loop;
      await Promise.allSettled([...sessions]);
    },
  };
}

async function echoSession(conn: Deno.UnixConn): Promise<void> {
  const buf = new Uint8Array(64 * 1024);
  for (;;) {
    const n = await conn.read(buf);
    if (n === null) break;
    await writeAll(conn, buf.subarray(0, n));
  }
  await conn.closeWrite();
}

async function sinkSession(conn: Deno.UnixConn): Promise<void> {
  const hash = createHash("sha256");
  const buf = new Uint8Array(64 * 1024);
  let bytes = 0;
  for (;;) {
    const n = await conn.read(buf);
    if (n === null) break;
    hash.update(buf.subarray(0, n));
    bytes += n;
  }
  await writeAll(
    conn,
    new TextEncoder().encode(`${bytes} ${hash.digest("hex")}\n`),
  );
  await conn.closeWrite();
}

async function sourceSession(conn: Deno.UnixConn): Promise<void> {
  const line = await readLine(conn, 32);
  const count = Number(line);
  if (!/^\d+$/.test(line) || count > MAX_SOURCE_BYTES) {
    await writeAll(
      conn,
      new TextEncoder().encode(
        `error: expected a byte count up to ${MAX_SOURCE_BYTES}\n`,
      ),
    );
    return;
  }
  const hash = createHash("sha256");
  const chunk = new Uint8Array(64 * 1024);
  for (let sent = 0; sent < count;) {
    const n = Math.min(chunk.length, count - sent);
    // getRandomValues fills at most 64 KiB per call.
    const part = crypto.getRandomValues(chunk.subarray(0, n));
    hash.update(part);
    await writeAll(conn, part);
    sent += n;
  }
  await writeAll(conn, new Uint8Array(hash.digest()));
  await conn.closeWrite();
}

async function readLine(conn: Deno.UnixConn, max: number): Promise<string> {
  const bytes: number[] = [];
  const one = new Uint8Array(1);
  while (bytes.length < max) {
    const n = await conn.read(one);
    if (n === null || one[0] === 0x0a) break;
    bytes.push(one[0]!);
  }
  return new TextDecoder().decode(new Uint8Array(bytes)).trim();
}

async function writeAll(conn: Deno.Conn, data: Uint8Array): Promise<void> {
  let at = 0;
  while (at < data.length) at += await conn.write(data.subarray(at));
}

function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // Closed already.
  }
}
