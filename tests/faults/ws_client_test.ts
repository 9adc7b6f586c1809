/**
 * A WebSocket client vanishes mid-stream: its TCP connection drops without a
 * close frame, between frames or inside one, or even before the guest has
 * answered. The guest's service sees its
 * connection end (a reset, not a clean end), the sidecar counts a reset by
 * the peer and holds nothing afterwards, and the route serves the next
 * client.
 */
import "../_support/ffi.ts";
import { assert, assertEquals } from "../../dev_deps.ts";
import {
  type Channel,
  HEADER_BYTES,
  openWebSocket,
  runClient,
  wsChannel,
} from "../_support/checked_transfer.ts";
import { type SidecarPair, sidecarPair } from "../_support/sidecar_pair.ts";
import {
  freePort,
  Stack,
  waitUntil,
  within,
} from "../_support/process_stack.ts";
import { checkedService, PATTERN, spec } from "./_traffic.ts";

const route = {
  name: "ws",
  from: { type: "ws" as const, port: 0, path: "/data" },
  to: { type: "vsock" as const, port: 5000 },
};

/** The sidecar with the WebSocket route, the guest exposing `servicePort`. */
function wsPair(servicePort: number): Promise<SidecarPair> {
  return sidecarPair({
    routes: [route],
    exposes: [{
      port: 5000,
      target: { kind: "tcp", host: "127.0.0.1", port: servicePort },
    }],
  });
}

/** Opens a raw TCP connection and completes the WebSocket handshake by hand. */
async function rawUpgrade(url: string): Promise<Deno.TcpConn> {
  const u = new URL(url);
  const conn = await Deno.connect({
    hostname: u.hostname,
    port: Number(u.port),
  });
  await conn.write(new TextEncoder().encode(
    `GET ${u.pathname} HTTP/1.1\r\nHost: ${u.host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
      `Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n`,
  ));
  // The 101 answer is small and has no body; read until its blank line.
  let head = "";
  const buf = new Uint8Array(1);
  while (!head.endsWith("\r\n\r\n")) {
    const n = await conn.read(buf);
    if (n === null) throw new Error(`handshake cut short: ${head}`);
    head += String.fromCharCode(buf[0]!);
  }
  assert(head.startsWith("HTTP/1.1 101"), head);
  return conn;
}

/** A masked binary frame carrying `payload` (client frames must be masked). */
function frame(payload: Uint8Array): Uint8Array {
  const n = payload.length;
  const len = n < 126 ? [n] : n < 65536 ? [126, n >> 8, n & 255] : null;
  if (len === null) throw new RangeError("frames here stay under 64 KiB");
  const mask = [0x12, 0x34, 0x56, 0x78];
  const out = new Uint8Array(2 + len.length - 1 + 4 + n);
  out[0] = 0x82; // FIN, binary
  out[1] = 0x80 | len[0]!;
  out.set(len.slice(1), 2);
  out.set(mask, 1 + len.length);
  const at = 1 + len.length + 4;
  for (let i = 0; i < n; i++) out[at + i] = payload[i]! ^ mask[i % 4]!;
  return out;
}

/**
 * A {@linkcode Channel} over a raw upgraded connection: writes masked
 * frames, reads the server's (unmasked) frames' payloads. Enough of RFC
 * 6455 for binary data; a close frame from the server ends the stream.
 */
function rawWsChannel(conn: Deno.TcpConn): Channel {
  let pending = new Uint8Array(0);
  let payload = new Uint8Array(0);
  const more = async () => {
    const buf = new Uint8Array(65536);
    const n = await conn.read(buf);
    if (n === null) return false;
    const next = new Uint8Array(pending.length + n);
    next.set(pending);
    next.set(buf.subarray(0, n), pending.length);
    pending = next;
    return true;
  };
  return {
    async read(buf) {
      while (payload.length === 0) {
        if (pending.length >= 2) {
          const op = pending[0]! & 0x0f;
          let len = pending[1]! & 0x7f;
          let at = 2;
          if (len === 126 && pending.length >= 4) {
            len = (pending[2]! << 8) | pending[3]!;
            at = 4;
          } else if (len === 127 && pending.length >= 10) {
            len = Number(new DataView(pending.buffer).getBigUint64(2));
            at = 10;
          } else if (len >= 126) at = -1;
          if (at > 0 && pending.length >= at + len) {
            const body = pending.slice(at, at + len);
            pending = pending.slice(at + len);
            if (op === 0x8) return null;
            if (op === 0x2 || op === 0x0) payload = body;
            continue;
          }
        }
        if (!(await more())) return null;
      }
      const n = Math.min(buf.length, payload.length);
      buf.set(payload.subarray(0, n));
      payload = payload.subarray(n);
      return n;
    },
    async write(chunk) {
      for (let at = 0; at < chunk.length; at += 60_000) {
        const f = frame(chunk.subarray(at, at + 60_000));
        let done = 0;
        while (done < f.length) done += await conn.write(f.subarray(done));
      }
    },
    closeWrite: () => Promise.resolve(),
    close() {
      try {
        conn.close();
      } catch {
        // Closed already.
      }
    },
  };
}

async function nothingLeft(pair: SidecarPair): Promise<void> {
  await waitUntil(
    () =>
      pair.sidecar.routes.connections().length === 0 &&
      pair.sidecar.engine.connectionCount === 0 &&
      pair.guest.engine.connectionCount === 0,
    5000,
    () => "no connections left",
  );
}

/** A normal client over Deno's WebSocket: a checked transfer must succeed. */
async function wsTransferWorks(pair: SidecarPair): Promise<void> {
  const ws = await openWebSocket(pair.sidecar.routes.get("ws")!.listening);
  const ch = wsChannel(ws);
  const outcome = await within(
    runClient(ch, spec(2 << 20, 2 << 20), PATTERN, { stallMs: 10_000 }),
    30_000,
    "a WebSocket transfer",
  );
  await within(ch.closed, 5000, "the socket to close");
  assertEquals(outcome.kind, "ok", JSON.stringify(outcome));
}

Deno.test("a WebSocket client that vanishes between frames mid-stream resets the guest's connection, and the route serves the next client", async () => {
  const service = await checkedService();
  const pair = await wsPair(service.port);
  try {
    const conn = await rawUpgrade(pair.sidecar.routes.get("ws")!.listening);
    let moved = 0;
    const big = 1 << 30;
    const client = runClient(rawWsChannel(conn), spec(big, big), PATTERN, {
      onBytes: (n) => (moved += n),
      stallMs: 10_000,
    });
    await waitUntil(
      () => moved >= 2 << 20,
      10_000,
      () => `progress (${moved})`,
    );
    conn.close(); // gone: no close frame
    assertEquals((await within(client, 5000, "the client")).kind, "ended");
    await waitUntil(
      () => service.results.length === 1,
      5000,
      () => "the guest side to end",
    );
    const guestSide = service.results[0]!.outcome;
    assertEquals(guestSide.kind, "ended", JSON.stringify(guestSide));
    assert(guestSide.bytesIn > 0 && guestSide.bytesIn < big);

    await waitUntil(
      () => pair.events.some((e) => e.type === "close"),
      5000,
    );
    const close = pair.events.find((e) => e.type === "close")!;
    assertEquals(close.type === "close" && close.outcome, "reset-by-peer");
    await nothingLeft(pair);

    await wsTransferWorks(pair);
    await nothingLeft(pair);
  } finally {
    await pair.stop();
    await service.close();
  }
});

Deno.test("a WebSocket client that vanishes inside a frame resets the guest's connection, and the route serves the next client", async () => {
  const service = await checkedService();
  const pair = await wsPair(service.port);
  try {
    const conn = await rawUpgrade(pair.sidecar.routes.get("ws")!.listening);
    // The header, some payload, then half of a frame and nothing more.
    const s = spec(1 << 20, 1 << 20);
    const header = new Uint8Array(HEADER_BYTES);
    const v = new DataView(header.buffer);
    [0x54535649, s.id, s.up, s.down, s.upAt, s.downAt, 0xffffffff].forEach(
      (x, i) => v.setUint32(i * 4, x, true),
    );
    await conn.write(frame(header));
    const body = new Uint8Array(40_000);
    PATTERN.each(s.upAt, body.length, (p) => body.set(p));
    await conn.write(frame(body));
    await waitUntil(
      () => service.open === 1,
      5000,
      () => "the guest side to open",
    );
    const next = new Uint8Array(50_000);
    PATTERN.each(s.upAt + body.length, next.length, (p) => next.set(p));
    const f = frame(next);
    await conn.write(f.subarray(0, 20_000));
    // Read a little of the download, so the stream is truly under way.
    await conn.read(new Uint8Array(4096));
    conn.close();

    await waitUntil(
      () => service.results.length === 1,
      5000,
      () => "the guest side to end",
    );
    const guestSide = service.results[0]!.outcome;
    assertEquals(guestSide.kind, "ended", JSON.stringify(guestSide));
    assertEquals(
      guestSide.bytesIn,
      body.length,
      "the whole frames arrived, checked",
    );
    await nothingLeft(pair);

    await wsTransferWorks(pair);
    await nothingLeft(pair);
  } finally {
    await pair.stop();
    await service.close();
  }
});

Deno.test({
  name:
    "a WebSocket client that sends data and vanishes before the guest answers resets the guest's connection instead of leaving it open",
  async fn() {
    const service = await checkedService();
    const wsPort = freePort();
    const stack = await Stack.create({
      routes: [{
        name: "ws",
        from: { type: "ws", host: "127.0.0.1", port: wsPort, path: "/data" },
        to: { type: "vsock", port: 5000 },
      }],
      exposes: [`5000=127.0.0.1:${service.port}`],
      driverTimeoutMs: 3000,
    });
    try {
      await stack.startServe();
      const guest = await stack.startGuest();
      await stack.waitReadyz(200);
      // With the guest paused, the sidecar's vsock connect waits; the
      // client's frames wait in the bridge; then the client is gone.
      guest.process.kill("SIGSTOP");
      try {
        const conn = await rawUpgrade(`ws://127.0.0.1:${wsPort}/data`);
        const s = spec(1 << 20, 1 << 20);
        const header = new Uint8Array(HEADER_BYTES);
        const v = new DataView(header.buffer);
        [0x54535649, s.id, s.up, s.down, s.upAt, s.downAt, 0xffffffff]
          .forEach((x, i) => v.setUint32(i * 4, x, true));
        await conn.write(frame(header));
        const body = new Uint8Array(50_000);
        PATTERN.each(s.upAt, body.length, (p) => body.set(p));
        await conn.write(frame(body));
        await new Promise((r) => setTimeout(r, 200));
        conn.close();
        await new Promise((r) => setTimeout(r, 200));
      } finally {
        guest.process.kill("SIGCONT");
      }
      await waitUntil(
        () => service.results.length === 1 && service.open === 0,
        5000,
        () => `the guest side to end (open ${service.open})`,
      );
      assertEquals(service.results[0]!.outcome.kind, "ended");
      await stack.waitNoConnections(5000);
      const ws = await openWebSocket(`ws://127.0.0.1:${wsPort}/data`);
      const ch = wsChannel(ws);
      const outcome = await within(
        runClient(ch, spec(1 << 20, 1 << 20), PATTERN, { stallMs: 10_000 }),
        30_000,
        "a WebSocket transfer",
      );
      await within(ch.closed, 5000, "the socket to close");
      assertEquals(outcome.kind, "ok", JSON.stringify(outcome));
    } finally {
      await stack.close();
      await service.close();
    }
  },
});
