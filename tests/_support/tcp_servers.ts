/**
 * Small loopback TCP servers for tests: each connection is handled by a
 * function; the server tracks its sessions so a test can wait for them and
 * close everything.
 *
 * @module
 */

import { concatBytes } from "./concat_bytes.ts";
import { createHash } from "node:crypto";

/** A running test server. */
export interface TestServer {
  port: number;
  /** Sessions that ended, with what the handler returned. */
  results: unknown[];
  close(): Promise<void>;
}

/** Serves `handler` on 127.0.0.1:`port` (by default a free port). */
export function tcpServer(
  handler: (conn: Deno.TcpConn) => Promise<unknown>,
  port = 0,
): TestServer {
  const listener = Deno.listen({ hostname: "127.0.0.1", port });
  const sessions = new Set<Promise<void>>();
  const results: unknown[] = [];
  const conns = new Set<Deno.TcpConn>();
  const loop = (async () => {
    try {
      for await (const conn of listener) {
        conns.add(conn);
        const s = handler(conn).then(
          (r) => void results.push(r),
          (e) => void results.push(e),
        ).finally(() => {
          conns.delete(conn);
          try {
            conn.close();
          } catch {
            // Closed by the handler.
          }
          sessions.delete(s);
        });
        sessions.add(s);
      }
    } catch {
      // Closed.
    }
  })();
  return {
    port: (listener.addr as Deno.NetAddr).port,
    results,
    async close() {
      listener.close();
      await loop;
      for (const c of conns) {
        try {
          c.close();
        } catch {
          // Closed.
        }
      }
      await Promise.allSettled([...sessions]);
    },
  };
}

/** A loopback TCP server that echoes every byte until EOF, then closes. */
export function echoServer(): TestServer {
  return tcpServer(async (conn) => {
    const buf = new Uint8Array(65536);
    for (;;) {
      const n = await conn.read(buf);
      if (n === null) return;
      await writeAllConn(conn, buf.subarray(0, n));
    }
  });
}

/** Reads until EOF; returns the byte count and SHA-256 (hex). */
export async function drainHash(
  conn: Deno.Conn,
): Promise<{ bytes: number; sha256: string }> {
  const hash = createHash("sha256");
  const buf = new Uint8Array(65536);
  let bytes = 0;
  for (;;) {
    const n = await conn.read(buf);
    if (n === null) break;
    hash.update(buf.subarray(0, n));
    bytes += n;
  }
  return { bytes, sha256: hash.digest("hex") };
}

/** Writes all of `data` in chunks. */
export async function writeAllConn(
  conn: Deno.Conn,
  data: Uint8Array,
  chunk = 65536,
): Promise<void> {
  for (let at = 0; at < data.length; at += chunk) {
    const part = data.subarray(at, Math.min(at + chunk, data.length));
    let done = 0;
    while (done < part.length) done += await conn.write(part.subarray(done));
  }
}

/** SHA-256 (hex) of `data`. */
export function sha256(data: Uint8Array): string {
  return createHash("sha256").update(data).digest("hex");
}

/** Reads `conn` to its end (the peer's FIN) and returns every byte. */
export async function readToEnd(
  conn: { read(p: Uint8Array): Promise<number | null> },
): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  const buf = new Uint8Array(65536);
  for (;;) {
    const n = await conn.read(buf);
    if (n === null) break;
    parts.push(buf.slice(0, n));
  }
  return concatBytes(parts);
}
