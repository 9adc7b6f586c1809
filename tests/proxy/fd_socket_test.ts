import "../_support/ffi.ts";
import { createHash } from "node:crypto";
import {
  assert,
  assertEquals,
  assertMatch,
  assertRejects,
  assertThrows,
} from "../../dev_deps.ts";
import { IoPoller } from "../../device/notify/io_poller.ts";
import {
  libc,
  SOCK_CLOEXEC,
  SOCK_NONBLOCK,
  SOCK_STREAM,
} from "../../device/shm/_libc.ts";
import {
  connectTcp,
  connectUnix,
  FdConn,
  FdListener,
  osError,
} from "../../proxy/fd_socket.ts";
import {
  decodeSockaddr,
  inetSockaddr,
  type Sockaddr,
  unixSockaddr,
} from "../../proxy/socket_address.ts";
import { pumpIo } from "../_support/io_pump.ts";
import { Prng } from "../_support/prng.ts";
import { readToEnd } from "../_support/tcp_servers.ts";
import { within } from "../_support/within.ts";

/** Bound on anything a test waits for that should take milliseconds. */
const WAIT_MS = 5000;

/** Bound on a whole test body: a hang fails the test instead of the run. */
const TEST_MS = 20_000;

const encoder = new TextEncoder();
const decoder = new TextDecoder();

type Reader = { read(p: Uint8Array): Promise<number | null> };
type Writer = { write(p: Uint8Array): Promise<number> };

/**
 * Runs `fn` with a poller that a pump dispatches meanwhile; at the end the
 * pump stops and the poller closes (failing whatever the test left in it,
 * which also ends a body that timed out).
 */
async function withIo(fn: (io: IoPoller) => Promise<void>): Promise<void> {
  const io = new IoPoller();
  const pump = pumpIo(io);
  try {
    await within(fn(io), TEST_MS, "test body");
  } finally {
    pump.stop();
    io.close();
  }
}

/** An FdConn dialled with connectTcp() and the Deno conn that accepted it. */
async function dialDeno(
  io: IoPoller,
): Promise<{ conn: FdConn; peer: Deno.TcpConn }> {
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const accepted = listener.accept();
  accepted.catch(() => {}); // Rejected by close() if the dial fails.
  const conn = await connectTcp(io, "127.0.0.1", listener.addr.port, WAIT_MS);
  return { conn, peer: await within(accepted, WAIT_MS, "accept") };
}

/** Closes `c` unless it is closed already. */
function closeQuietly(c: { close(): void }): void {
  try {
    c.close();
  } catch {
    // Closed already (by the test, or by IoPoller.close()).
  }
}

/** Writes all of `data`; returns how many writes took less than offered. */
async function writeAll(w: Writer, data: Uint8Array): Promise<number> {
  let partial = 0;
  for (let at = 0; at < data.length;) {
    const n = await w.write(data.subarray(at));
    assert(n > 0, "write() took nothing");
    if (n < data.length - at) partial++;
    at += n;
  }
  return partial;
}

/** Reads exactly `n` bytes; throws at an early FIN. */
async function readExactly(r: Reader, n: number): Promise<Uint8Array> {
  const out = new Uint8Array(n);
  for (let at = 0; at < n;) {
    const got = await r.read(out.subarray(at));
    if (got === null) throw new Error(`FIN after ${at} of ${n} bytes`);
    at += got;
  }
  return out;
}

/** Reads to FIN; returns the byte count and SHA-256. */
async function hashToEnd(r: Reader): Promise<{ bytes: number; sha: string }> {
  const hash = createHash("sha256");
  const buf = new Uint8Array(65536);
  let bytes = 0;
  for (;;) {
    const n = await r.read(buf);
    if (n === null) break;
    hash.update(buf.subarray(0, n));
    bytes += n;
  }
  return { bytes, sha: hash.digest("hex") };
}

function sha256(data: Uint8Array): string {
  return createHash("sha256").update(data).digest("hex");
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Whether `p` is still pending after `ms`. */
async function stillPending(p: Promise<unknown>, ms: number): Promise<boolean> {
  const pending = Symbol("pending");
  let timer: ReturnType<typeof setTimeout> | undefined;
  const result = await Promise.race([
    p.then(() => "settled", () => "settled"),
    new Promise((resolve) => timer = setTimeout(() => resolve(pending), ms)),
  ]);
  clearTimeout(timer);
  return result === pending;
}

/** A TCP port nobody listens on (just released by a listener). */
function closedPort(): number {
  using l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  return l.addr.port;
}

/**
 * A raw socket bound to `sa`, listening with `backlog` (or not listening
 * at all when null), for the states Deno.listen cannot make.
 */
function rawSocket(sa: Sockaddr, backlog: number | null): Disposable & {
  port: number;
} {
  const c = libc();
  const fd = c.socket(sa.family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  assert(fd >= 0, "socket()");
  const close = () => void c.close(fd);
  if (
    c.bind(fd, sa.bytes, sa.bytes.length) !== 0 ||
    (backlog !== null && c.listen(fd, backlog) !== 0)
  ) {
    close();
    throw new Error("bind() or listen() failed");
  }
  const buf = new Uint8Array(128);
  const len = new Uint32Array([128]);
  c.getsockname(fd, buf, new Uint8Array(len.buffer));
  const at = decodeSockaddr(buf, len[0]!);
  return {
    port: at.transport === "tcp" ? at.port : 0,
    [Symbol.dispose]: close,
  };
}

/** `/proc/self/fd`, as "number -> target" lines. */
function openFds(): string[] {
  const out: string[] = [];
  for (const e of Deno.readDirSync("/proc/self/fd")) {
    try {
      out.push(`${e.name} -> ${Deno.readLinkSync(`/proc/self/fd/${e.name}`)}`);
    } catch {
      // The directory's own descriptor, closed once listed.
    }
  }
  return out.sort();
}

const hasIPv6Loopback = (() => {
  try {
    Deno.listen({ hostname: "::1", port: 0 }).close();
    return true;
  } catch {
    return false;
  }
})();

Deno.test("osError() gives Deno's error class and message for an errno", () => {
  const cases: Array<[number, new (msg: string) => Error, string]> = [
    [111, Deno.errors.ConnectionRefused, "Connection refused (os error 111)"],
    [
      104,
      Deno.errors.ConnectionReset,
      "Connection reset by peer (os error 104)",
    ],
    [98, Deno.errors.AddrInUse, "Address already in use (os error 98)"],
    [32, Deno.errors.BrokenPipe, "Broken pipe (os error 32)"],
    [110, Deno.errors.TimedOut, "Connection timed out (os error 110)"],
  ];
  for (const [code, Class, message] of cases) {
    const err = osError(code);
    assert(err instanceof Class, `${code}: ${err.constructor.name}`);
    assertEquals(err.message, message);
  }
  const other = osError(5);
  assertEquals(other.constructor, Error);
  assertEquals(other.message, "Input/output error (os error 5)");
});

Deno.test("FdListener.listen() on port 0 takes a real port and hands over a Deno.connect client, bytes both ways", async () => {
  await withIo(async (io) => {
    const accepted = Promise.withResolvers<FdConn>();
    const listener = await FdListener.listen(io, "127.0.0.1", 0, {
      onConnection: (c) => accepted.resolve(c),
    });
    try {
      assertEquals(listener.addr.transport, "tcp");
      assertEquals(listener.addr.hostname, "127.0.0.1");
      assert(listener.addr.port > 0, `port ${listener.addr.port}`);
      using client = await Deno.connect({
        hostname: "127.0.0.1",
        port: listener.addr.port,
      });
      const conn = await within(accepted.promise, WAIT_MS, "accept");
      try {
        assertEquals(conn.remoteAddr, {
          transport: "tcp",
          hostname: "127.0.0.1",
          port: client.localAddr.port,
        });
        conn.setNoDelay();
        assertEquals(await conn.read(new Uint8Array(0)), 0);
        assertEquals(await conn.write(new Uint8Array(0)), 0);
        await writeAll(client, encoder.encode("ping"));
        assertEquals(decoder.decode(await readExactly(conn, 4)), "ping");
        await writeAll(conn, encoder.encode("pong"));
        assertEquals(decoder.decode(await readExactly(client, 4)), "pong");
      } finally {
        conn.close();
      }
    } finally {
      listener.close();
    }
  });
});

Deno.test("FdListener takes every pending connection, however many accept batches they need", async () => {
  const io = new IoPoller();
  const conns: FdConn[] = [];
  const clients: Deno.TcpConn[] = [];
  const all = Promise.withResolvers<void>();
  // More than two batches: the first dispatch runs the batch listen()
  // queued with again() and the one of the edge; the rest need again().
  const count = 200;
  const listener = await FdListener.listen(io, "127.0.0.1", 0, {
    onConnection(c) {
      conns.push(c);
      if (conns.length === count) all.resolve();
    },
  });
  try {
    // All of them wait in the backlog before the first dispatch.
    for (let i = 0; i < count; i++) {
      clients.push(
        await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port }),
      );
    }
    assertEquals(conns.length, 0);
    using _pump = pumpIo(io);
    await within(all.promise, WAIT_MS, `${count} accepts`);
    assertEquals(
      conns.map((c) => c.remoteAddr.transport === "tcp" && c.remoteAddr.port)
        .sort(),
      clients.map((c) => c.localAddr.port).sort(),
    );
  } finally {
    listener.close();
    for (const c of [...conns, ...clients]) c.close();
    io.close();
  }
});

Deno.test("FdListener.listen() on an address in use throws Deno.errors.AddrInUse, and Deno.listen() on its port does too", async () => {
  await withIo(async (io) => {
    {
      using taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
      await assertRejects(
        () =>
          FdListener.listen(io, "127.0.0.1", taken.addr.port, {
            onConnection: (c) => c.close(),
          }),
        Deno.errors.AddrInUse,
        "Address already in use (os error 98)",
      );
      assertEquals(io.size, 0);
    }
    const listener = await FdListener.listen(io, "127.0.0.1", 0, {
      onConnection: (c) => c.close(),
    });
    try {
      assertThrows(
        () => Deno.listen({ hostname: "127.0.0.1", port: listener.addr.port }),
        Deno.errors.AddrInUse,
      );
    } finally {
      listener.close();
      listener.close(); // Idempotent.
    }
  });
});

Deno.test("FdConn.closeWrite() sends FIN: the peer reads to EOF and can still answer", async () => {
  await withIo(async (io) => {
    const { conn, peer } = await dialDeno(io);
    try {
      await writeAll(conn, encoder.encode("request"));
      await conn.closeWrite();
      const got = await within(readToEnd(peer), WAIT_MS, "peer reads to FIN");
      assertEquals(decoder.decode(got), "request");
      await writeAll(peer, encoder.encode("response"));
      await peer.closeWrite();
      const back = await within(readToEnd(conn), WAIT_MS, "conn reads to FIN");
      assertEquals(decoder.decode(back), "response");
    } finally {
      conn.close();
      peer.close();
    }
  });
});

Deno.test("FdConn.read() returns null at the peer's FIN, on every read after it, and writing goes on", async () => {
  await withIo(async (io) => {
    const { conn, peer } = await dialDeno(io);
    try {
      const buf = new Uint8Array(64);
      const waiting = conn.read(buf); // Before the FIN: waits for its edge.
      await peer.closeWrite();
      assertEquals(await within(waiting, WAIT_MS, "read at FIN"), null);
      assertEquals(await conn.read(buf), null);
      assertEquals(await conn.read(buf), null);
      await writeAll(conn, encoder.encode("still here"));
      await conn.closeWrite();
      assertEquals(decoder.decode(await readToEnd(peer)), "still here");
    } finally {
      conn.close();
      peer.close();
    }
  });
});

Deno.test("FdConn.read() returns null for a FIN that came in with the last data", async () => {
  await withIo(async (io) => {
    const { conn, peer } = await dialDeno(io);
    try {
      await writeAll(peer, encoder.encode("last"));
      await peer.closeWrite();
      // Data and FIN raise their edges before anyone reads: the short read
      // that takes the data must not make the next read wait for another.
      await sleep(20);
      const buf = new Uint8Array(4096);
      assertEquals(await within(conn.read(buf), WAIT_MS, "data"), 4);
      assertEquals(await within(conn.read(buf), WAIT_MS, "FIN"), null);
    } finally {
      conn.close();
      peer.close();
    }
  });
});

Deno.test("FdConn.read() still gets bytes that arrive after a short read emptied the socket", async () => {
  await withIo(async (io) => {
    const { conn, peer } = await dialDeno(io);
    try {
      const buf = new Uint8Array(4096);
      const read = (what: string) => within(conn.read(buf), WAIT_MS, what);
      await writeAll(peer, encoder.encode("abc"));
      assertEquals(await read("first bytes"), 3); // Short: reads are skipped now.
      // A read that waits first, then the data.
      const waiting = conn.read(buf);
      await sleep(20); // Several dispatches with nothing to report.
      await writeAll(peer, encoder.encode("defgh"));
      assertEquals(await within(waiting, WAIT_MS, "late bytes"), 5);
      assertEquals(decoder.decode(buf.subarray(0, 5)), "defgh");
      // Data whose edge is dispatched while no read waits.
      await writeAll(peer, encoder.encode("ij"));
      await sleep(20);
      assertEquals(await read("bytes seen before the read"), 2);
      // Random sizes and timing on both sides.
      const seed = 4242;
      const rng = new Prng(seed);
      for (let round = 0; round < 100; round++) {
        const chunk = rng.bytes(rng.int(1, 6000));
        const readFirst = rng.chance(0.5);
        const got = readFirst ? readExactly(conn, chunk.length) : null;
        if (rng.chance(0.3)) await sleep(rng.int(0, 3));
        await writeAll(peer, chunk);
        if (rng.chance(0.3)) await sleep(rng.int(0, 3));
        const bytes = await within(
          got ?? readExactly(conn, chunk.length),
          WAIT_MS,
          `seed ${seed}, round ${round}`,
        );
        assertEquals(
          sha256(bytes),
          sha256(chunk),
          `seed ${seed}, round ${round}`,
        );
      }
    } finally {
      conn.close();
      peer.close();
    }
  });
});

Deno.test("FdConn reads a server's greeting (a peer that speaks first), queued before or after the socket joins the poller", async () => {
  await withIo(async (io) => {
    using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const greeting = encoder.encode("220 ready\r\n");
    const greet = async () => {
      const peer = await within(listener.accept(), WAIT_MS, "accept");
      await writeAll(peer, greeting);
      return peer;
    };
    const readsGreeting = async (
      conn: FdConn,
      peer: Deno.TcpConn,
      what: string,
    ) => {
      try {
        assertEquals(
          await within(readExactly(conn, greeting.length), WAIT_MS, what),
          greeting,
        );
      } finally {
        conn.close();
        peer.close();
      }
    };
    // Queued after: connectTcp() watches the socket first (and, as for
    // every socket it connects, skips reading until an EPOLLIN edge).
    const accepted = greet();
    const conn = await connectTcp(io, "127.0.0.1", listener.addr.port, WAIT_MS);
    await readsGreeting(conn, await accepted, "after");
    // Queued before: a socket connected and greeted before it is watched
    // still reads, with no edge after it joined the set.
    const sa = inetSockaddr("127.0.0.1", listener.addr.port);
    const c = libc();
    const fd = c.socket(
      sa.family,
      SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
      0,
    );
    assert(fd >= 0, "socket()");
    c.connect(fd, sa.bytes, sa.bytes.length);
    const early = await greet();
    await sleep(20); // The greeting is in the socket's queue now.
    const late = new FdConn(fd, io, {
      transport: "tcp",
      hostname: "127.0.0.1",
      port: listener.addr.port,
    }, false);
    await readsGreeting(late, early, "before");
  });
});

Deno.test("FdConn.read() pending when the conn closes rejects with Deno.errors.BadResource, as do later calls", async () => {
  await withIo(async (io) => {
    const { conn, peer } = await dialDeno(io);
    try {
      const pending = conn.read(new Uint8Array(16));
      assert(await stillPending(pending, 10));
      conn.close();
      await assertRejects(
        () => within(pending, WAIT_MS, "pending call"),
        Deno.errors.BadResource,
      );
      assert(conn.closed);
      await assertRejects(
        () => conn.read(new Uint8Array(1)),
        Deno.errors.BadResource,
      );
      await assertRejects(
        () => conn.write(new Uint8Array(1)),
        Deno.errors.BadResource,
      );
      await assertRejects(() => conn.closeWrite(), Deno.errors.BadResource);
      conn.setNoDelay(); // A no-op once closed, not an error.
      assertEquals(
        await within(peer.read(new Uint8Array(1)), WAIT_MS, "peer read"),
        null,
        "peer sees FIN",
      );
    } finally {
      closeQuietly(conn);
      peer.close();
    }
  });
});

Deno.test("FdConn.read() while another read waits rejects with Deno.errors.Busy, and the first read still gets the data", async () => {
  await withIo(async (io) => {
    const { conn, peer } = await dialDeno(io);
    try {
      const first = conn.read(new Uint8Array(16));
      assert(await stillPending(first, 10));
      await assertRejects(
        () => conn.read(new Uint8Array(16)),
        Deno.errors.Busy,
        "Cannot read: another read is pending",
      );
      await peer.write(encoder.encode("hi"));
      assertEquals(await within(first, WAIT_MS, "first read"), 2);
    } finally {
      closeQuietly(conn);
      peer.close();
    }
  });
});

Deno.test("FdConn.write() pending on a full socket rejects with Deno.errors.BadResource when the conn closes", async () => {
  await withIo(async (io) => {
    const { conn, peer } = await dialDeno(io);
    try {
      // The peer reads nothing, so the first write fills both buffers and
      // comes back short; the next waits for room that never comes.
      const big = new Uint8Array(64 << 20);
      const n = await conn.write(big);
      assert(n < big.length, `took all ${n} bytes`);
      const pending = conn.write(big.subarray(n));
      assert(await stillPending(pending, 50));
      conn.close();
      await assertRejects(
        () => within(pending, WAIT_MS, "pending call"),
        Deno.errors.BadResource,
      );
    } finally {
      closeQuietly(conn);
      peer.close();
    }
  });
});

Deno.test("FdConn.close() a second time throws Deno.errors.BadResource, as Deno.Conn does", async () => {
  await withIo(async (io) => {
    const { conn, peer } = await dialDeno(io);
    conn.close();
    assertThrows(() => conn.close(), Deno.errors.BadResource);
    peer.close();
    assertThrows(() => peer.close(), Deno.errors.BadResource);
  });
});

/**
 * An FdConn whose peer resets it: the peer (an FdConn too, accepted by an
 * FdListener) closes with a byte of `conn`'s unread, which makes the
 * kernel send RST instead of FIN. (A Deno peer would not do: closing a
 * Deno.Conn this way sends FIN here.)
 */
async function resetConn(io: IoPoller): Promise<FdConn> {
  const accepted = Promise.withResolvers<FdConn>();
  const listener = await FdListener.listen(io, "127.0.0.1", 0, {
    onConnection: (c) => accepted.resolve(c),
  });
  try {
    const conn = await connectTcp(io, "127.0.0.1", listener.addr.port, WAIT_MS);
    const peer = await within(accepted.promise, WAIT_MS, "accept");
    await writeAll(conn, encoder.encode("xy"));
    assertEquals(await readExactly(peer, 1), encoder.encode("x"));
    peer.close();
    return conn;
  } finally {
    listener.close();
  }
}

Deno.test("FdConn.write() to a peer that reset rejects with ConnectionReset or BrokenPipe", async () => {
  await withIo(async (io) => {
    const conn = await resetConn(io);
    try {
      const err = await within(
        (async () => {
          // The RST may still be on its way: the first writes can succeed.
          for (let i = 0; i < 1000; i++) {
            try {
              await conn.write(encoder.encode("more"));
            } catch (err) {
              return err as Error;
            }
            await sleep(1);
          }
          throw new Error("write() kept succeeding after the reset");
        })(),
        WAIT_MS,
        "write error",
      );
      assert(
        err instanceof Deno.errors.ConnectionReset ||
          err instanceof Deno.errors.BrokenPipe,
        `${err.constructor.name}: ${err.message}`,
      );
      assertMatch(
        err.message,
        /^(Connection reset by peer \(os error 104\)|Broken pipe \(os error 32\))$/,
      );
    } finally {
      conn.close();
    }
  });
});

Deno.test("FdConn.read() rejects with Deno.errors.ConnectionReset when the peer resets", async () => {
  await withIo(async (io) => {
    const conn = await resetConn(io);
    try {
      await assertRejects(
        () => within(conn.read(new Uint8Array(16)), WAIT_MS, "read"),
        Deno.errors.ConnectionReset,
        "Connection reset by peer (os error 104)",
      );
    } finally {
      conn.close();
    }
  });
});

Deno.test("connectTcp() to a closed port rejects with Deno.errors.ConnectionRefused and Deno's message", async () => {
  await withIo(async (io) => {
    const port = closedPort();
    const denos = await assertRejects(
      () => Deno.connect({ hostname: "127.0.0.1", port }),
      Deno.errors.ConnectionRefused,
    );
    const ours = await assertRejects(
      () => connectTcp(io, "127.0.0.1", port, WAIT_MS),
      Deno.errors.ConnectionRefused,
    );
    assertEquals(ours.message, "Connection refused (os error 111)");
    assertEquals(ours.message, denos.message);
    assertEquals(io.size, 0, "the failed socket left the poller");
  });
});

Deno.test("connectTcp() gives up after its timeout when the listener's backlog is full", async () => {
  await withIo(async (io) => {
    // Linux drops a SYN while the accept queue is full (backlog 0 holds
    // one connection), so the second connect stays in SYN_SENT: its first
    // retransmission is a second later, well past the timeout.
    using full = rawSocket(inetSockaddr("127.0.0.1", 0), 0);
    using _filler = await Deno.connect({
      hostname: "127.0.0.1",
      port: full.port,
    });
    const started = performance.now();
    await assertRejects(
      () => connectTcp(io, "127.0.0.1", full.port, 200),
      Error,
      "connect timed out after 200 ms",
    );
    const took = performance.now() - started;
    assert(took >= 190 && took < 2000, `gave up after ${took} ms`);
    assertEquals(io.size, 0, "the abandoned socket left the poller");
  });
});

Deno.test("connectTcp() resolves a host name and reports the address it reached", async () => {
  await withIo(async (io) => {
    using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const accepted = listener.accept();
    const conn = await connectTcp(io, "localhost", listener.addr.port, WAIT_MS);
    using peer = await within(accepted, WAIT_MS, "accept");
    try {
      assertEquals(conn.remoteAddr, {
        transport: "tcp",
        hostname: "127.0.0.1",
        port: listener.addr.port,
      });
      await writeAll(conn, encoder.encode("!"));
      assertEquals(decoder.decode(await readExactly(peer, 1)), "!");
    } finally {
      conn.close();
    }
  });
});

Deno.test({
  name: "FdListener and connectTcp() work over IPv6 loopback",
  ignore: !hasIPv6Loopback,
  fn: async () => {
    await withIo(async (io) => {
      const accepted = Promise.withResolvers<FdConn>();
      const listener = await FdListener.listen(io, "::1", 0, {
        onConnection: (c) => accepted.resolve(c),
      });
      const conn = await connectTcp(io, "[::1]", listener.addr.port, WAIT_MS);
      const server = await within(accepted.promise, WAIT_MS, "accept");
      try {
        assertEquals(listener.addr.hostname, "::1");
        assertEquals(conn.remoteAddr, {
          transport: "tcp",
          hostname: "::1",
          port: listener.addr.port,
        });
        assertEquals(
          server.remoteAddr.transport === "tcp" && server.remoteAddr.hostname,
          "::1",
        );
        await writeAll(conn, encoder.encode("v6"));
        assertEquals(decoder.decode(await readExactly(server, 2)), "v6");
      } finally {
        conn.close();
        server.close();
        listener.close();
      }
    });
  },
});

Deno.test("connectUnix() connects to a Deno unix listener, bytes both ways and half-close", async () => {
  const dir = await Deno.makeTempDir({ prefix: "ivsock-fd-" });
  try {
    await withIo(async (io) => {
      const path = `${dir}/echo.sock`;
      using listener = Deno.listen({ transport: "unix", path });
      const accepted = listener.accept();
      const conn = await connectUnix(io, path, WAIT_MS);
      using peer = await within(accepted, WAIT_MS, "accept");
      try {
        assertEquals(conn.remoteAddr, { transport: "unix", path });
        conn.setNoDelay(); // TCP only: ignored here.
        await writeAll(conn, encoder.encode("over unix"));
        await conn.closeWrite();
        assertEquals(decoder.decode(await readToEnd(peer)), "over unix");
        await writeAll(peer, encoder.encode("and back"));
        await peer.closeWrite();
        assertEquals(decoder.decode(await readToEnd(conn)), "and back");
      } finally {
        conn.close();
      }
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("connectUnix() rejects for a missing path, a socket nobody listens on, and a path too long", async () => {
  const dir = await Deno.makeTempDir({ prefix: "ivsock-fd-" });
  try {
    await withIo(async (io) => {
      await assertRejects(
        () => connectUnix(io, `${dir}/missing.sock`, WAIT_MS),
        Deno.errors.NotFound,
        "No such file or directory (os error 2)",
      );
      const path = `${dir}/bound.sock`;
      {
        using _bound = rawSocket(unixSockaddr(path), null);
        await assertRejects(
          () => connectUnix(io, path, WAIT_MS),
          Deno.errors.ConnectionRefused,
          "Connection refused (os error 111)",
        );
      }
      await assertRejects(
        () => connectUnix(io, `${dir}/${"x".repeat(120)}`, WAIT_MS),
        RangeError,
        "Socket path must be at most 107 bytes",
      );
      assertEquals(io.size, 0);
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("IoPoller.close() closes live FdConns and FdListeners: pending reads reject with BadResource", async () => {
  const io = new IoPoller();
  const pump = pumpIo(io);
  const listener = await FdListener.listen(io, "127.0.0.1", 0, {
    onConnection: (c) => c.close(),
  });
  const { conn, peer } = await dialDeno(io);
  try {
    const pending = conn.read(new Uint8Array(16));
    pump.stop();
    io.close();
    await assertRejects(
      () => within(pending, WAIT_MS, "pending call"),
      Deno.errors.BadResource,
    );
    assert(conn.closed);
    assertThrows(() => conn.close(), Deno.errors.BadResource);
    assertEquals(
      await within(peer.read(new Uint8Array(1)), WAIT_MS, "peer read"),
      null,
    );
    await assertRejects(
      () => Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port }),
      Deno.errors.ConnectionRefused,
    );
    listener.close(); // Already closed by the poller: a no-op.
  } finally {
    pump.stop();
    io.close();
    closeQuietly(conn);
    peer.close();
  }
});

Deno.test("FdConn carries 8 MiB each way at once, intact", async () => {
  await withIo(async (io) => {
    const { conn, peer } = await dialDeno(io);
    try {
      const seed = 8;
      const rng = new Prng(seed);
      const up = rng.bytes(8 << 20);
      const down = rng.bytes(8 << 20);
      const [partialWrites, atPeer, , atConn] = await within(
        Promise.all([
          (async () => {
            // All that is left in each write, so the kernel takes part.
            const partial = await writeAll(conn, up);
            await conn.closeWrite();
            return partial;
          })(),
          hashToEnd(peer),
          (async () => {
            await writeAll(peer, down);
            await peer.closeWrite();
          })(),
          hashToEnd(conn),
        ]),
        30_000,
        "8 MiB each way",
      );
      assert(partialWrites > 0, "every write was taken whole");
      assertEquals(atPeer, { bytes: up.length, sha: sha256(up) });
      assertEquals(atConn, { bytes: down.length, sha: sha256(down) });
    } finally {
      conn.close();
      peer.close();
    }
  });
});

Deno.test("FdConn, FdListener and the connects leave no descriptor open, failed ones included", async () => {
  const dir = await Deno.makeTempDir({ prefix: "ivsock-fd-" });
  const before = openFds();
  try {
    await withIo(async (io) => {
      const accepted = Promise.withResolvers<FdConn>();
      const listener = await FdListener.listen(io, "127.0.0.1", 0, {
        onConnection: (c) => accepted.resolve(c),
      });
      const client = await Deno.connect({
        hostname: "127.0.0.1",
        port: listener.addr.port,
      });
      await within(accepted.promise, WAIT_MS, "accept");
      const { conn, peer } = await dialDeno(io);
      await assertRejects(() =>
        FdListener.listen(io, "127.0.0.1", listener.addr.port, {
          onConnection: (c) => c.close(),
        })
      );
      await assertRejects(() =>
        connectTcp(io, "127.0.0.1", closedPort(), WAIT_MS)
      );
      {
        using full = rawSocket(inetSockaddr("127.0.0.1", 0), 0);
        using _filler = await Deno.connect({
          hostname: "127.0.0.1",
          port: full.port,
        });
        await assertRejects(() => connectTcp(io, "127.0.0.1", full.port, 50));
      }
      const path = `${dir}/s.sock`;
      {
        using unixListener = Deno.listen({ transport: "unix", path });
        const unixPeer = unixListener.accept();
        const unixConn = await connectUnix(io, path, WAIT_MS);
        (await unixPeer).close();
        unixConn.close();
      }
      await assertRejects(() => connectUnix(io, `${dir}/none`, WAIT_MS));
      client.close();
      peer.close();
      listener.close();
      // `conn` and the accepted conn stay open: the poller's close() at the
      // end of withIo() must close them.
      assert(!conn.closed);
      assertEquals(io.size, 2, "nothing else is left in the poller");
    });
    assertEquals(openFds(), before);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
