/**
 * The demo's services "inside the guest": a small HTTP site and an echo
 * service, on UNIX sockets in a private directory, so that nothing on the
 * host network reaches them except through vsock.
 *
 * @module
 */

/** Running demo services and where they listen. */
export interface DemoServices {
  httpSocket: string;
  echoSocket: string;
  close(): Promise<void>;
}

/** Starts both services in `dir`. */
export function startDemoServices(
  dir: string,
  guestInfo: () => Record<string, unknown>,
): DemoServices {
  const httpSocket = `${dir}/http.sock`;
  const echoSocket = `${dir}/echo.sock`;
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
  const echo = Deno.listen({ transport: "unix", path: echoSocket });
  const sessions = new Set<Promise<void>>();
  const loop = (async () => {
    try {
      for await (const conn of echo) {
        const s = echoSession(conn).finally(() => sessions.delete(s));
        sessions.add(s);
      }
    } catch {
      // Closed.
    }
  })();
  return {
    httpSocket,
    echoSocket,
    async close() {
      abort.abort();
      echo.close();
      await loop;
      await Promise.allSettled([...sessions]);
      await http.finished;
    },
  };
}

/** Writes back what it reads; at the client's end of input, ends output too. */
async function echoSession(conn: Deno.UnixConn): Promise<void> {
  const buf = new Uint8Array(64 * 1024);
  try {
    for (;;) {
      const n = await conn.read(buf);
      if (n === null) break;
      let at = 0;
      while (at < n) at += await conn.write(buf.subarray(at, n));
    }
    await conn.closeWrite();
  } catch {
    // The peer went away.
  } finally {
    try {
      conn.close();
    } catch {
      // Closed already.
    }
  }
}
