/**
 * Host-initiated and guest-initiated TCP routes through a real sidecar and a
 * real guest agent: checksummed transfers both ways, half-close with real TCP
 * peers, limits, timeouts and resets.
 */
import "../_support/ffi.ts";
import { assert, assertEquals, assertRejects } from "../../dev_deps.ts";
import { VsockError } from "../../device/vsock/errors.ts";
import { Prng } from "../_support/prng.ts";
import { routePort, sidecarPair } from "../_support/sidecar_pair.ts";
import {
  drainHash,
  echoServer,
  readToEnd,
  sha256,
  tcpServer,
  writeAllConn,
} from "../_support/tcp_servers.ts";

const route = (
  name: string,
  vsockPort: number,
  limits: Record<string, number> = {},
) => ({
  name,
  from: { type: "tcp" as const, port: 0 },
  to: { type: "vsock" as const, port: vsockPort },
  limits,
});

Deno.test("a host TCP client reaches a guest service through a route, 8 MiB each way, checksummed", async () => {
  const down = new Prng(11).bytes(8 << 20);
  const service = tcpServer(async (conn) => {
    const [got] = await Promise.all([
      drainHash(conn),
      (async () => {
        await writeAllConn(conn, down);
        await conn.closeWrite();
      })(),
    ]);
    return got;
  });
  const pair = await sidecarPair({
    routes: [route("web", 80)],
    exposes: [{
      port: 80,
      target: { kind: "tcp", host: "127.0.0.1", port: service.port },
    }],
  });
  try {
    const up = new Prng(12).bytes(8 << 20);
    const client = await Deno.connect({
      hostname: "127.0.0.1",
      port: routePort(pair, "web"),
    });
    const [received] = await Promise.all([
      drainHash(client),
      (async () => {
        await writeAllConn(client, up);
        await client.closeWrite();
      })(),
    ]);
    client.close();
    assertEquals(
      received,
      { bytes: down.length, sha256: sha256(down) },
      "guest to host",
    );
    await waitFor(() => service.results.length === 1);
    assertEquals(
      service.results[0],
      { bytes: up.length, sha256: sha256(up) },
      "host to guest",
    );
    await waitFor(() => pair.events.some((e) => e.type === "close"));
    const close = pair.events.find((e) => e.type === "close")!;
    assert(
      close.type === "close" && close.bytesToGuest === up.length &&
        close.bytesFromGuest === down.length,
    );
  } finally {
    await pair.stop();
    await service.close();
  }
});

Deno.test("the host client's half-close reaches the guest service, and the reply still comes back", async () => {
  const service = tcpServer(async (conn) => {
    const got = await drainHash(conn); // until the client's FIN
    await writeAllConn(
      conn,
      new TextEncoder().encode(`got ${got.bytes} bytes`),
    );
    await conn.closeWrite();
  });
  const pair = await sidecarPair({
    routes: [route("web", 80)],
    exposes: [{
      port: 80,
      target: { kind: "tcp", host: "127.0.0.1", port: service.port },
    }],
  });
  try {
    const client = await Deno.connect({
      hostname: "127.0.0.1",
      port: routePort(pair, "web"),
    });
    await writeAllConn(client, new Uint8Array(12345));
    await client.closeWrite();
    const reply = new TextDecoder().decode(await readToEnd(client));
    client.close();
    assertEquals(reply, "got 12345 bytes");
  } finally {
    await pair.stop();
    await service.close();
  }
});

Deno.test("an orderly close through a route takes three packets: a SHUTDOWN each way and an RST", async () => {
  // An echo service closes once the client has: the usual end of a
  // request-reply connection.
  const service = echoServer();
  const pair = await sidecarPair({
    routes: [route("echo", 80)],
    exposes: [{
      port: 80,
      target: { kind: "tcp", host: "127.0.0.1", port: service.port },
    }],
  });
  try {
    const stats = pair.sidecar.engine.stats;
    for (let i = 0; i < 5; i++) {
      const client = await Deno.connect({
        hostname: "127.0.0.1",
        port: routePort(pair, "echo"),
      });
      await writeAllConn(client, new Uint8Array([i]));
      assertEquals(await client.read(new Uint8Array(1)), 1);
      client.close();
      await waitFor(() =>
        pair.events.filter((e) => e.type === "close").length === i + 1
      );
      assertEquals(
        pair.events.filter((e) => e.type === "close")[i]!.outcome,
        "closed",
      );
    }
    await waitFor(() => stats.packetsOut.RST === 5);
    // Per connection: REQUEST, RESPONSE, one RW each way, then the close.
    assertEquals(stats.packetsOut, { REQUEST: 5, RW: 5, SHUTDOWN: 5, RST: 5 });
    assertEquals(stats.packetsIn, { RESPONSE: 5, RW: 5, SHUTDOWN: 5 });
  } finally {
    await pair.stop();
    await service.close();
  }
});

Deno.test("the guest service's half-close reaches the host client, which can still send", async () => {
  const service = tcpServer(async (conn) => {
    await writeAllConn(conn, new TextEncoder().encode("hello, then EOF"));
    await conn.closeWrite();
    return await drainHash(conn); // the client keeps sending after our FIN
  });
  const pair = await sidecarPair({
    routes: [route("web", 80)],
    exposes: [{
      port: 80,
      target: { kind: "tcp", host: "127.0.0.1", port: service.port },
    }],
  });
  try {
    const client = await Deno.connect({
      hostname: "127.0.0.1",
      port: routePort(pair, "web"),
    });
    assertEquals(
      new TextDecoder().decode(await readToEnd(client)),
      "hello, then EOF",
    );
    const after = new Prng(3).bytes(100_000);
    await writeAllConn(client, after);
    await client.closeWrite();
    await waitFor(() => service.results.length === 1);
    client.close();
    assertEquals(service.results[0], {
      bytes: after.length,
      sha256: sha256(after),
    });
  } finally {
    await pair.stop();
    await service.close();
  }
});

Deno.test("the guest reaches a host TCP target only through a route, checksummed both ways", async () => {
  const down = new Prng(21).bytes(2 << 20);
  const target = tcpServer(async (conn) => {
    const [got] = await Promise.all([
      drainHash(conn),
      (async () => {
        await writeAllConn(conn, down);
        await conn.closeWrite();
      })(),
    ]);
    return got;
  });
  const pair = await sidecarPair({
    routes: [{
      name: "db",
      from: { type: "vsock", port: 5432 },
      to: { type: "tcp", host: "127.0.0.1", port: target.port },
    }],
    forwards: [{ listen: { host: "127.0.0.1", port: 0 }, port: 5432 }],
  });
  try {
    // The guest's own program connects to the agent's local forward.
    const forward = await pair.guest.engine.connect(5432);
    const up = new Prng(22).bytes(3 << 20);
    const writer = forward.writable.getWriter();
    const sending = (async () => {
      for (let at = 0; at < up.length; at += 65536) {
        await writer.write(up.subarray(at, at + 65536));
      }
      await writer.close();
    })();
    const chunks: Uint8Array[] = [];
    for await (const c of forward.readable) chunks.push(c);
    await sending;
    const got = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
    let at = 0;
    for (const c of chunks) {
      got.set(c, at);
      at += c.length;
    }
    assertEquals(sha256(got), sha256(down));
    await waitFor(() => target.results.length === 1);
    assertEquals(target.results[0], { bytes: up.length, sha256: sha256(up) });

    const err = await assertRejects(
      () => pair.guest.engine.connect(5433),
      VsockError,
    );
    assertEquals(err.code, "ECONNREFUSED", "no route, no connection");
  } finally {
    await pair.stop();
    await target.close();
  }
});

Deno.test("a route at its connection limit rejects a new connection at once instead of queueing it", async () => {
  const held: Deno.TcpConn[] = [];
  const service = tcpServer(async (conn) => {
    held.push(conn);
    await drainHash(conn);
  });
  const pair = await sidecarPair({
    routes: [route("web", 80, { maxConnections: 2 })],
    exposes: [{
      port: 80,
      target: { kind: "tcp", host: "127.0.0.1", port: service.port },
    }],
  });
  const clients: Deno.TcpConn[] = [];
  try {
    const port = routePort(pair, "web");
    for (let i = 0; i < 2; i++) {
      const c = await Deno.connect({ hostname: "127.0.0.1", port });
      clients.push(c);
      await writeAllConn(c, new Uint8Array([i]));
    }
    await waitFor(() => held.length === 2);
    const third = await Deno.connect({ hostname: "127.0.0.1", port });
    clients.push(third);
    assertEquals(
      await third.read(new Uint8Array(1)).catch(() => null),
      null,
      "closed at once",
    );
    const web = pair.sidecar.routes.get("web")!;
    assertEquals(web.stats.rejected.limit, 1);
    assert(
      pair.events.some((e) =>
        e.type === "deny" && e.reason.includes("connection limit of 2")
      ),
    );
    assertEquals(web.connections.size, 2, "the first two are untouched");
  } finally {
    for (const c of clients) c.close();
    await pair.stop();
    await service.close();
  }
});

Deno.test("a disabled route refuses new connections and keeps its live ones", async () => {
  const service = echoServer();
  const pair = await sidecarPair({
    routes: [route("web", 80)],
    exposes: [{
      port: 80,
      target: { kind: "tcp", host: "127.0.0.1", port: service.port },
    }],
  });
  try {
    const port = routePort(pair, "web");
    const live = await Deno.connect({ hostname: "127.0.0.1", port });
    await writeAllConn(live, new Uint8Array([1]));
    await live.read(new Uint8Array(1));
    pair.sidecar.routes.setEnabled("web", false);
    const refused = await Deno.connect({ hostname: "127.0.0.1", port });
    assertEquals(await refused.read(new Uint8Array(1)).catch(() => null), null);
    refused.close();
    await writeAllConn(live, new Uint8Array([2]));
    const buf = new Uint8Array(1);
    assertEquals(await live.read(buf), 1, "the live connection still works");
    assertEquals(buf[0], 2);
    live.close();
    assertEquals(pair.sidecar.routes.get("web")!.stats.rejected.disabled, 1);
  } finally {
    await pair.stop();
    await service.close();
  }
});

Deno.test("a connection idle past the route's idle timeout is closed", async () => {
  const service = tcpServer((conn) => drainHash(conn));
  const pair = await sidecarPair({
    routes: [route("web", 80, { idleTimeoutMs: 150 })],
    exposes: [{
      port: 80,
      target: { kind: "tcp", host: "127.0.0.1", port: service.port },
    }],
  });
  try {
    const client = await Deno.connect({
      hostname: "127.0.0.1",
      port: routePort(pair, "web"),
    });
    await writeAllConn(client, new Uint8Array([1]));
    const t0 = Date.now();
    assertEquals(await client.read(new Uint8Array(1)).catch(() => null), null);
    assert(Date.now() - t0 >= 100, "not before the timeout");
    client.close();
    await waitFor(() =>
      pair.events.some((e) =>
        e.type === "close" && e.outcome === "idle-timeout"
      )
    );
  } finally {
    await pair.stop();
    await service.close();
  }
});

Deno.test("a guest service that is not listening gets the host client closed and the refusal counted", async () => {
  const closedPort = await freePort();
  const pair = await sidecarPair({
    routes: [route("web", 80)],
    exposes: [{
      port: 80,
      target: { kind: "tcp", host: "127.0.0.1", port: closedPort },
    }],
  });
  try {
    const client = await Deno.connect({
      hostname: "127.0.0.1",
      port: routePort(pair, "web"),
    });
    assertEquals(await client.read(new Uint8Array(1)).catch(() => null), null);
    client.close();
    await waitFor(() =>
      pair.events.some((e) => e.type === "close" || e.type === "deny")
    );
  } finally {
    await pair.stop();
  }
});

Deno.test("a guest port with no service answering: connect times out and the client is closed", async () => {
  const pair = await sidecarPair({
    routes: [route("web", 81, { connectTimeoutMs: 200 })],
    driverTimeoutMs: 10_000,
  });
  try {
    // Freeze the guest: its transport stays "running" for the device, but
    // nothing answers the REQUEST.
    await pair.guest.runner.stop();
    const client = await Deno.connect({
      hostname: "127.0.0.1",
      port: routePort(pair, "web"),
    });
    const t0 = Date.now();
    assertEquals(await client.read(new Uint8Array(1)).catch(() => null), null);
    assert(Date.now() - t0 >= 150, "closed by the connect timeout");
    client.close();
    await waitFor(() =>
      pair.events.some((e) =>
        e.type === "deny" && e.reason.includes("ETIMEDOUT")
      )
    );
  } finally {
    await pair.stop();
  }
});

Deno.test("a TCP target that refuses gets the guest's connection reset", async () => {
  const closedPort = await freePort();
  const pair = await sidecarPair({
    routes: [{
      name: "db",
      from: { type: "vsock", port: 5432 },
      to: { type: "tcp", host: "127.0.0.1", port: closedPort },
    }],
  });
  try {
    const conn = await pair.guest.engine.connect(5432);
    const info = await conn.closed;
    assertEquals(info.reason, "ECONNRESET");
    await waitFor(() =>
      pair.events.some((e) => e.type === "deny" && e.route === "db")
    );
  } finally {
    await pair.stop();
  }
});

Deno.test("a guest service that resets mid-stream closes the host client's connection", async () => {
  const service = tcpServer(async (conn) => {
    await conn.read(new Uint8Array(10));
    conn.close(); // abrupt: unread data makes the kernel send RST
  });
  const pair = await sidecarPair({
    routes: [route("web", 80)],
    exposes: [{
      port: 80,
      target: { kind: "tcp", host: "127.0.0.1", port: service.port },
    }],
  });
  try {
    const client = await Deno.connect({
      hostname: "127.0.0.1",
      port: routePort(pair, "web"),
    });
    await writeAllConn(client, new Uint8Array(200_000)).catch(() => {});
    assertEquals(
      await readToEnd(client).then(() => "ended", () => "ended"),
      "ended",
    );
    client.close();
  } finally {
    await pair.stop();
    await service.close();
  }
});

async function waitFor(cond: () => boolean, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await new Promise((r) => setTimeout(r, 5));
  }
}

async function freePort(): Promise<number> {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return await Promise.resolve(port);
}
