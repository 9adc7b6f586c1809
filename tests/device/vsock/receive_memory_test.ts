/**
 * What unread data may cost a connection: credit bounds the bytes, and the
 * number of queued packets is bounded too, because empty SEQPACKET messages
 * use no credit. Found by the hostile-guest fuzzer (docs/reliability.md,
 * "Fuzzing"): 10^6 empty SEQPACKET messages on one unread connection took
 * 208 MiB of heap, and 256 KiB of one-byte STREAM packets took 53 MiB. A
 * first cap of buf_alloc/256 packets then reset a well-behaved peer: a
 * longer fuzz run had our own host echo send a guest more than 1024 small
 * messages within credit.
 */
import { assert, assertEquals } from "../../../dev_deps.ts";
import { Prng } from "../../_support/prng.ts";
import { OP, SEQ_F, TYPE } from "../../../device/packets/header.ts";
import type { VsockConnection } from "../../../device/vsock/connection.ts";
import {
  DEFAULT_BUF_ALLOC,
  maxQueuedPackets,
} from "../../../device/vsock/constants.ts";
import {
  joinLimit,
  MAX_READ,
  MIN_CHUNK,
  ReceiveBuffer,
} from "../../../device/vsock/receive_buffer.ts";
import type { VsockMessage } from "../../../device/vsock/vsock_message.ts";
import { MIN_POOLED } from "../../../device/vsock/chunk_pool.ts";
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

/** A small receive buffer keeps the limits (and these loops) small. */
const SMALL = 4096;

Deno.test("engine resets a peer that floods empty SEQPACKET messages while the application is not reading", async () => {
  const p = new ScriptedPeer({ bufAlloc: SMALL });
  const conn = await unread(p, TYPE.SEQPACKET);
  const most = maxQueuedPackets(SMALL);
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

Deno.test("engine keeps a whole window of one-byte SEQPACKET messages sent within credit, and reads each back whole", async () => {
  const p = new ScriptedPeer({ bufAlloc: SMALL });
  const conn = await unread(p, TYPE.SEQPACKET);
  const one = new Uint8Array(1);
  for (let i = 0; i < SMALL; i++) {
    one[0] = i * 3;
    rw(p, TYPE.SEQPACKET, one);
  }
  assertEquals(conn.state, "established", "a peer within credit is kept");
  assertEquals(conn.unreadBytes, SMALL);
  const reader = conn.readable.getReader();
  for (let i = 0; i < SMALL; i++) {
    const { value } = await reader.read();
    assertEquals([...value!], [(i * 3) & 0xff], `message ${i}`);
  }
  reader.releaseLock();
  p.engine.close();
  await tick();
});

Deno.test("engine holds one-byte STREAM packets sent within credit without resetting, and reads them back in order", async () => {
  const p = new ScriptedPeer();
  const conn = await unread(p, TYPE.STREAM);
  // A whole window of one-byte packets: credit allows it, so must we.
  const n = conn.receiveWindow;
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
  for (let i = 0; i < maxQueuedPackets(conn.receiveWindow) * 2; i++) {
    rw(p, TYPE.SEQPACKET, new Uint8Array(0));
  }
  assertEquals(conn.closeInfo, null, "consumed on arrival, nothing queued");
  assertEquals(p.pump().map((s) => opName(s.h.op)).includes("RST"), false);
  p.engine.close();
});

Deno.test("maxQueuedPackets() allows one packet per byte of credit, plus a few empty ones", () => {
  assertEquals(maxQueuedPackets(SMALL), SMALL + 64);
  assertEquals(maxQueuedPackets(DEFAULT_BUF_ALLOC), DEFAULT_BUF_ALLOC + 64);
});

Deno.test("ReceiveBuffer returns SEQPACKET messages whole and in order, whatever their sizes and parts (seeded)", () => {
  const rng = new Prng(7);
  const b = new ReceiveBuffer(true);
  const expected: Array<{ bytes: number[]; eor: boolean }> = [];
  let fill = 0;
  const next = (n: number) => {
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i++) out[i] = fill++ & 0xff;
    return out;
  };
  const source = (bytes: Uint8Array) => ({
    copyPayload(dest: Uint8Array, at = 0) {
      dest.set(bytes, at);
      return bytes.length;
    },
  });
  const check = () => {
    const m = b.shift() as VsockMessage | undefined;
    const want = expected.shift();
    assertEquals(m === undefined, want === undefined);
    if (m === undefined || want === undefined) return;
    assertEquals([...m], want.bytes);
    assertEquals(m.eor, want.eor);
  };
  for (let round = 0; round < 2000; round++) {
    // A message in 1 to 3 parts of 0 to 9000 bytes (mostly small).
    const parts = rng.int(1, 3);
    const bytes: number[] = [];
    const eor = rng.chance(0.5);
    for (let k = 0; k < parts; k++) {
      const size = rng.chance(0.8) ? rng.int(0, 40) : rng.int(0, 9000);
      const part = next(size);
      bytes.push(...part);
      b.push(size, source(part), k === parts - 1, eor);
    }
    expected.push({ bytes, eor });
    // Read some now and then, so reads meet chunks half used.
    if (rng.chance(0.3)) { for (let r = rng.int(0, 3); r > 0; r--) check(); }
  }
  while (expected.length > 0) check();
  assertEquals([b.bytes, b.entries, b.shift()], [0, 0, undefined]);
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

Deno.test("ReceiveBuffer gives a payload that arrives with nothing unread a buffer of about its own size", () => {
  const b = new ReceiveBuffer(false);
  const source = {
    copyPayload(dest: Uint8Array, at = 0) {
      dest.fill(9, at, at + 3);
      return 3;
    },
  };
  b.push(3, source, false, false);
  const c = b.shift()!;
  // The pool's smallest buffer, at most twice the bytes or MIN_POOLED.
  assertEquals([c.length, c.buffer.byteLength], [3, MIN_POOLED]);
  assertEquals([...c], [9, 9, 9]);
});

Deno.test("ReceiveBuffer hands queued STREAM packets over in reads of at most MAX_READ bytes, in order", () => {
  const b = new ReceiveBuffer(false);
  const PACKET = 4052; // a 4 KiB rx buffer's payload
  const COUNT = 160;
  let next = 0;
  const source = {
    copyPayload(dest: Uint8Array, at = 0) {
      for (let i = 0; i < PACKET; i++) dest[at + i] = next++ & 0xff;
      return PACKET;
    },
  };
  for (let i = 0; i < COUNT; i++) b.push(PACKET, source, false, false);
  // The room behind unread data grows with it: a few chunks, not 160.
  assert(b.entries <= 16, `${b.entries} chunks for ${COUNT} packets`);
  const reads: number[] = [];
  let at = 0;
  for (let c = b.shift(); c !== undefined; c = b.shift()) {
    reads.push(c.length);
    for (const x of c) assertEquals(x, at++ & 0xff);
  }
  assertEquals(at, COUNT * PACKET);
  assert(reads.every((n) => n <= MAX_READ), `reads of ${reads}`);
  // 160 packets one by one would be 160 reads; 3 is the fewest that can
  // hold them.
  assertEquals(reads.length, Math.ceil((COUNT * PACKET) / MAX_READ));
  assertEquals([b.bytes, b.entries], [0, 0]);
});

Deno.test("ReceiveBuffer joins no more than the limit a read gives it", () => {
  const b = new ReceiveBuffer(false);
  const PACKET = 4052;
  const COUNT = 160;
  const source = {
    copyPayload(dest: Uint8Array, at = 0) {
      dest.fill(1, at, at + PACKET);
      return PACKET;
    },
  };
  // 64 KiB, a starting window's quarter (joinLimit): no chunk and no read
  // is larger.
  b.limit = 65536;
  for (let i = 0; i < COUNT; i++) b.push(PACKET, source, false, false);
  const reads: number[] = [];
  for (let c = b.shift(); c !== undefined; c = b.shift()) reads.push(c.length);
  assert(reads.every((n) => n <= 65536), `reads of ${reads}`);
  assertEquals(reads.reduce((a, n) => a + n, 0), COUNT * PACKET);
  assert(reads.length >= Math.ceil((COUNT * PACKET) / 65536));
});

Deno.test("joinLimit() is a quarter of the window, from 4 KiB up to MAX_READ", () => {
  assertEquals(joinLimit(4096), 4096);
  assertEquals(joinLimit(256 << 10), 64 << 10);
  assertEquals(joinLimit(1 << 20), MAX_READ);
  assertEquals(joinLimit(16 << 20), MAX_READ);
});
