/**
 * What unread data may cost a connection: credit bounds the bytes, and the
 * number of queued packets is bounded too, because empty and tiny packets
 * cost memory without using credit. Found while building the hostile-guest
 * fuzzer (docs/reliability.md, "Fuzzing"): 10^6 empty SEQPACKET messages on
 * one unread connection took 208 MiB of heap, and 256 KiB of one-byte
 * STREAM packets took 53 MiB.
 */
import { assert, assertEquals } from "../../../dev_deps.ts";
import { OP, SEQ_F, TYPE } from "../../../device/packets/header.ts";
import type { VsockConnection } from "../../../device/vsock/connection.ts";
import {
  DEFAULT_BUF_ALLOC,
  maxQueuedPackets,
} from "../../../device/vsock/constants.ts";
import {
  MIN_CHUNK,
  ReceiveBuffer,
} from "../../../device/vsock/receive_buffer.ts";
import { opName, ScriptedPeer, tick } from "../../_support/scripted_peer.ts";

/** A connection the application accepted and is not reading. */
async function unread(
  p: ScriptedPeer,
  type: number,
): Promise<VsockConnection> {
  const listener = p.engine.listen(80, {
    type: type === TYPE.SEQPACKET ? "seqpacket" : "stream",
  });
  p.deliver({ op: OP.REQUEST, srcPort: 5, dstPort: 80, type });
  p.pump();
  const conn = await listener.accept();
  listener.close();
  return conn;
}

function rw(p: ScriptedPeer, type: number, payload: Uint8Array): void {
  p.deliver(
    { op: OP.RW, srcPort: 5, dstPort: 80, type, flags: SEQ_F.EOM },
    payload,
  );
}

Deno.test("engine resets a peer that floods empty SEQPACKET messages while the application is not reading", async () => {
  const p = new ScriptedPeer();
  const conn = await unread(p, TYPE.SEQPACKET);
  const most = maxQueuedPackets(DEFAULT_BUF_ALLOC);
  for (let i = 0; i < most; i++) rw(p, TYPE.SEQPACKET, new Uint8Array(0));
  assertEquals(conn.state, "established", `${most} empty messages may wait`);
  assertEquals(conn.unreadBytes, 0, "they use no credit");
  rw(p, TYPE.SEQPACKET, new Uint8Array(0));
  assertEquals(conn.closeInfo?.reason, "EPROTO");
  assert(/more than \d+ packets/.test(conn.closeInfo!.message));
  assertEquals(p.pumpOps(), ["RST"]);
  for (let i = 0; i < 10_000; i++) rw(p, TYPE.SEQPACKET, new Uint8Array(0));
  assertEquals(p.pumpOps().filter((op) => op !== "RST"), []);
  p.engine.close();
});

Deno.test("engine resets a peer that floods one-byte SEQPACKET messages past the packet limit, within credit", async () => {
  const p = new ScriptedPeer();
  const conn = await unread(p, TYPE.SEQPACKET);
  const most = maxQueuedPackets(DEFAULT_BUF_ALLOC);
  for (let i = 0; i <= most; i++) rw(p, TYPE.SEQPACKET, new Uint8Array(1));
  assertEquals(conn.closeInfo?.reason, "EPROTO");
  assert(most < DEFAULT_BUF_ALLOC, "well within the bytes of credit");
  p.engine.close();
});

Deno.test("engine holds one-byte STREAM packets sent within credit without resetting, and reads them back in order", async () => {
  const p = new ScriptedPeer();
  const conn = await unread(p, TYPE.STREAM);
  // A whole window of one-byte packets: credit allows it, so must we.
  const n = DEFAULT_BUF_ALLOC;
  const one = new Uint8Array(1);
  for (let i = 0; i < n; i++) {
    one[0] = i * 7;
    rw(p, TYPE.STREAM, one);
  }
  assertEquals(conn.state, "established");
  assertEquals(conn.unreadBytes, n);
  const reader = conn.readable.getReader();
  let at = 0;
  while (at < n) {
    const { value } = await reader.read();
    for (const b of value!) {
      assertEquals(b, (at * 7) & 0xff, `byte ${at}`);
      at++;
    }
  }
  assertEquals(conn.unreadBytes, 0);
  reader.releaseLock();
  p.engine.close();
  await tick();
});

Deno.test("engine does not count packets against the limit once the application stopped reading", async () => {
  const p = new ScriptedPeer();
  const conn = await unread(p, TYPE.SEQPACKET);
  await conn.readable.cancel();
  p.pump();
  for (let i = 0; i < maxQueuedPackets(DEFAULT_BUF_ALLOC) * 2; i++) {
    rw(p, TYPE.SEQPACKET, new Uint8Array(0));
  }
  assertEquals(conn.closeInfo, null, "consumed on arrival, nothing queued");
  assertEquals(p.pump().map((s) => opName(s.h.op)).includes("RST"), false);
  p.engine.close();
});

Deno.test("maxQueuedPackets() allows a small buffer a few dozen packets and a default one a thousand", () => {
  assertEquals(maxQueuedPackets(256), 64);
  assertEquals(maxQueuedPackets(DEFAULT_BUF_ALLOC), 1024);
});

Deno.test("ReceiveBuffer keeps tiny STREAM payloads queued behind unread data in shared chunks", () => {
  const b = new ReceiveBuffer(false);
  const n = 100_000;
  const one = new Uint8Array(1);
  const source = {
    copyPayload(dest: Uint8Array, at = 0) {
      dest.set(one, at);
      return 1;
    },
  };
  for (let i = 0; i < n; i++) {
    one[0] = i;
    b.push(1, source, false, false);
  }
  assert(
    b.entries <= Math.ceil((2 * n) / MIN_CHUNK) + 2,
    `${b.entries} chunks for ${n} bytes`,
  );
  let at = 0;
  for (let c = b.shift(); c !== undefined; c = b.shift()) {
    for (const x of c) assertEquals(x, at++ & 0xff);
  }
  assertEquals([at, b.bytes, b.entries], [n, 0, 0]);
});

Deno.test("ReceiveBuffer gives a payload that arrives with nothing unread a buffer of its own size", () => {
  const b = new ReceiveBuffer(false);
  const source = {
    copyPayload(dest: Uint8Array, at = 0) {
      dest.fill(9, at, at + 3);
      return 3;
    },
  };
  b.push(3, source, false, false);
  const c = b.shift()!;
  assertEquals([c.length, c.buffer.byteLength], [3, 3]);
});
