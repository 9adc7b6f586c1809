/**
 * WebSocket routes through a real sidecar and guest agent, with Deno's
 * WebSocket client (and a raw socket for a client that vanishes).
 */
import "../_support/ffi.ts";
import { assert, assertEquals } from "../../dev_deps.ts";
import { VsockMessage } from "../../device/vsock/vsock_message.ts";
import { Prng } from "../_support/prng.ts";
import { type SidecarPair, sidecarPair } from "../_support/sidecar_pair.ts";
import { sha256, tcpServer } from "../_support/tcp_servers.ts";

const wsRoute = (port: number, socket: "stream" | "seqpacket" = "stream") => ({
  name: "ws",
  from: { type: "ws" as const, port: 0, path: "/echo" },
  to: { type: "vsock" as const, port, socket },
});

/** A guest-local TCP echo service. */
function echoService() {
  return tcpServer(async (conn) => {
    const buf = new Uint8Array(65536);
    let total = 0;
    for (;;) {
      const n = await conn.read(buf).catch(() => null);
      if (n === null) break;
      total += n;
      let at = 0;
      while (at < n) at += await conn.write(buf.subarray(at, n));
    }
    await conn.closeWrite().catch(() => {});
    return total;
  });
}

function url(pair: SidecarPair): string {
  return pair.sidecar.routes.get("ws")!.listening;
}

/** Opens a WebSocket and resolves once open (or rejects on failure). */
function open(u: string, protocols?: string | string[]): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    const ws = protocols === undefined
      ? new WebSocket(u)
      : new WebSocket(u, protocols);
    ws.binaryType = "arraybuffer";
    ws.onopen = () => resolve(ws);
    ws.onerror = () => reject(new Error("WebSocket failed to open"));
  });
}

/** Resolves with the close event. */
function closed(ws: WebSocket): Promise<CloseEvent> {
  return new Promise((resolve) => {
    if (ws.readyState === WebSocket.CLOSED) resolve(new CloseEvent("close"));
    ws.addEventListener("close", (e) => resolve(e), { once: true });
  });
}

Deno.test("a WebSocket client echoes 2 MiB through the guest in binary frames, checksummed", async () => {
  const service = echoService();
  const pair = await sidecarPair({
    routes: [wsRoute(7)],
    exposes: [{
      port: 7,
      target: { kind: "tcp", host: "127.0.0.1", port: service.port },
    }],
  });
  try {
    const ws = await open(url(pair));
    const data = new Prng(5).bytes(2 << 20);
    const got: Uint8Array[] = [];
    let received = 0;
    const done = new Promise<void>((resolve) => {
      ws.onmessage = (e) => {
        const chunk = new Uint8Array(e.data as ArrayBuffer);
        got.push(chunk);
        received += chunk.length;
        if (received === data.length) resolve();
      };
    });
    for (let at = 0; at < data.length; at += 32768) {
      ws.send(data.subarray(at, at + 32768));
    }
    await done;
    const all = new Uint8Array(received);
    let at = 0;
    for (const c of got) {
      all.set(c, at);
      at += c.length;
    }
    assertEquals(sha256(all), sha256(data));
    ws.close(1000);
    await closed(ws);
  } finally {
    await pair.stop();
    await service.close();
  }
});

Deno.test("each WebSocket message is one SEQPACKET message, both ways", async () => {
  const pair = await sidecarPair({ routes: [wsRoute(9, "seqpacket")] });
  const listener = pair.guest.engine.listen(9, { type: "seqpacket" });
  const server = (async () => {
    const conn = await listener.accept();
    const w = conn.writable.getWriter();
    const sizes: number[] = [];
    for await (const m of conn.readable) {
      sizes.push(m.length);
      await w.write(VsockMessage.copyOf(m)); // echo each message as a message
    }
    await w.close().catch(() => {});
    return sizes;
  })();
  try {
    const ws = await open(url(pair));
    const sizes = [1, 70_000, 0, 300];
    const back: number[] = [];
    const done = new Promise<void>((resolve) => {
      ws.onmessage = (e) => {
        back.push((e.data as ArrayBuffer).byteLength);
        if (back.length === sizes.length) resolve();
      };
    });
    for (const n of sizes) ws.send(new Prng(n).bytes(n));
    await done;
    assertEquals(back, sizes, "boundaries survive the guest and the way back");
    ws.close();
    await closed(ws);
    assertEquals(await server, sizes);
  } finally {
    listener.close();
    await pair.stop();
  }
});

Deno.test("a text frame closes the WebSocket with 1003", async () => {
  const service = echoService();
  const pair = await sidecarPair({
    routes: [wsRoute(7)],
    exposes: [{
      port: 7,
      target: { kind: "tcp", host: "127.0.0.1", port: service.port },
    }],
  });
  try {
    const ws = await open(url(pair));
    const c = closed(ws);
    ws.send("hello as text");
    const e = await c;
    assertEquals(e.code, 1003);
    assert(e.reason.includes("binary"), e.reason);
  } finally {
    await pair.stop();
    await service.close();
  }
});

Deno.test("the binary subprotocol is accepted when offered, and no other is", async () => {
  const service = echoService();
  const pair = await sidecarPair({
    routes: [wsRoute(7)],
    exposes: [{
      port: 7,
      target: { kind: "tcp", host: "127.0.0.1", port: service.port },
    }],
  });
  try {
    const a = await open(url(pair), ["chat", "binary"]);
    assertEquals(a.protocol, "binary");
    a.close();
    await closed(a);
    const b = await open(url(pair));
    assertEquals(b.protocol, "");
    b.close();
    await closed(b);
    // Offering only something else must not get it echoed back.
    const res = await fetch(url(pair).replace("ws://", "http://"), {
      headers: {
        upgrade: "websocket",
        connection: "Upgrade",
        "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
        "sec-websocket-version": "13",
        "sec-websocket-protocol": "chat",
      },
    });
    assertEquals(res.status, 101);
    assertEquals(res.headers.get("sec-websocket-protocol"), null);
    await res.body?.cancel();
  } finally {
    await pair.stop();
    await service.close();
  }
});

Deno.test("a plain HTTP request gets 426 and an unknown path 404", async () => {
  const pair = await sidecarPair({ routes: [wsRoute(7)] });
  try {
    const base = url(pair).replace("ws://", "http://").replace("/echo", "");
    const r1 = await fetch(`${base}/echo`);
    assertEquals(r1.status, 426);
    await r1.body?.cancel();
    const r2 = await fetch(`${base}/nope`);
    assertEquals(r2.status, 404);
    assert((await r2.json()).error.includes("/nope"));
  } finally {
    await pair.stop();
  }
});

Deno.test("a WebSocket client that vanishes resets its guest connection", async () => {
  let guestSide: Promise<unknown> | null = null;
  const pair = await sidecarPair({ routes: [wsRoute(11)] });
  const listener = pair.guest.engine.listen(11);
  const accepted = listener.accept().then((conn) => {
    guestSide = conn.closed;
    return conn;
  });
  try {
    const u = new URL(url(pair));
    const raw = await Deno.connect({
      hostname: u.hostname,
      port: Number(u.port),
    });
    const request =
      `GET /echo HTTP/1.1\r\nHost: ${u.host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
      `Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n`;
    await raw.write(new TextEncoder().encode(request));
    const head = new Uint8Array(1024);
    const n = (await raw.read(head))!;
    assert(
      new TextDecoder().decode(head.subarray(0, n)).startsWith("HTTP/1.1 101"),
    );
    // One masked binary frame, then the client disappears without a close frame.
    const payload = new Uint8Array([1, 2, 3]);
    const mask = new Uint8Array([9, 8, 7, 6]);
    const frame = new Uint8Array([
      0x82,
      0x80 | payload.length,
      ...mask,
      ...payload.map((b, i) => b ^ mask[i % 4]!),
    ]);
    await raw.write(frame);
    const conn = await accepted;
    const first = await conn.readable.getReader().read();
    assertEquals([...first.value!], [1, 2, 3]);
    raw.close();
    const info = await (guestSide as unknown as Promise<{ reason: string }>);
    assertEquals(
      info.reason,
      "ECONNRESET",
      "the guest sees the connection reset",
    );
  } finally {
    listener.close();
    await pair.stop();
  }
});
