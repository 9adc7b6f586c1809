/**
 * Credit flow control (virtio 1.3, 5.10.6.3) against a scripted peer.
 */
import { assert, assertEquals } from "../../../dev_deps.ts";
import { OP } from "../../../device/packets/header.ts";
import { growBufAlloc } from "../../../device/vsock/constants.ts";
import { peerFree, u32Diff } from "../../../device/vsock/credit.ts";
import type { VsockConnection } from "../../../device/vsock/connection.ts";
import { opName, ScriptedPeer, tick } from "../../_support/scripted_peer.ts";

async function open(
  p: ScriptedPeer,
  peerBufAlloc: number,
  port = 5000,
): Promise<VsockConnection> {
  const listener = p.engine.listen(80 + port);
  p.deliver({
    op: OP.REQUEST,
    srcPort: port,
    dstPort: 80 + port,
    bufAlloc: peerBufAlloc,
  });
  p.pump();
  const conn = await listener.accept();
  listener.close();
  return conn;
}

Deno.test("peerFree() and u32Diff() count modulo 2^32", () => {
  assertEquals(u32Diff(5, 0xfffffff0), 21);
  assertEquals(
    peerFree(1000, 5, 0xfffffff0),
    979,
    "tx_cnt wrapped past peer fwd_cnt",
  );
  assertEquals(peerFree(1000, 0xfffffffa, 0xfffffffa), 1000);
  assertEquals(
    peerFree(100, 200, 0),
    0,
    "a peer that shrank its buffer owes us nothing",
  );
});

Deno.test("engine never sends beyond the peer's credit, then asks for more", async () => {
  const p = new ScriptedPeer();
  const conn = await open(p, 1000);
  const writer = conn.writable.getWriter();
  const done = writer.write(new Uint8Array(2500));
  await tick();
  const sent = p.pump();
  assertEquals(sent.map((s) => [opName(s.h.op), s.h.len]), [["RW", 1000], [
    "CREDIT_REQUEST",
    0,
  ]]);
  assertEquals(p.pump(), [], "nothing more until the peer grants credit");
  p.deliver({
    op: OP.CREDIT_UPDATE,
    srcPort: 5000,
    dstPort: 5080,
    bufAlloc: 1000,
    fwdCnt: 1000,
  });
  assertEquals(
    p.pump().map((s) => [opName(s.h.op), s.h.len]),
    [["RW", 1000], ["CREDIT_REQUEST", 0]],
    "out of credit again: ask again",
  );
  // Credit can also arrive on any packet: every packet carries fwd_cnt.
  p.deliver({
    op: OP.RW,
    srcPort: 5000,
    dstPort: 5080,
    bufAlloc: 1000,
    fwdCnt: 2000,
  }, new Uint8Array(1));
  assertEquals(p.pump().map((s) => s.h.len), [500]);
  await done;
  p.engine.close();
});

Deno.test("engine honours credit counters that wrap around 2^32", async () => {
  const p = new ScriptedPeer();
  const conn = await open(p, 100);
  // The peer claims fwd_cnt just below 2^32 while our tx_cnt is 0: in u32
  // terms we are 16 bytes ahead... of nothing sent, which means the window
  // is shifted; only 84 bytes fit.
  p.deliver({
    op: OP.CREDIT_UPDATE,
    srcPort: 5000,
    dstPort: 5080,
    bufAlloc: 100,
    fwdCnt: 0xfffffff0,
  });
  const w = conn.writable.getWriter();
  w.write(new Uint8Array(200)).catch(() => {});
  await tick();
  assertEquals(p.pump()[0]!.h.len, 84);
  p.engine.close();
});

Deno.test("engine sends CREDIT_UPDATE once the reader frees space the peer thinks it lacks", async () => {
  const p = new ScriptedPeer({ bufAlloc: 4096 });
  const conn = await open(p, 65536);
  p.deliver({ op: OP.RW, srcPort: 5000, dstPort: 5080 }, new Uint8Array(1000));
  const reader = conn.readable.getReader();
  await reader.read();
  assertEquals(
    p.pump(),
    [],
    "3 KiB still free as the peer sees it: no update yet",
  );
  p.deliver({ op: OP.RW, srcPort: 5000, dstPort: 5080 }, new Uint8Array(2500));
  await reader.read();
  const [update] = p.pump();
  assertEquals(opName(update!.h.op), "CREDIT_UPDATE");
  assertEquals([update!.h.fwdCnt, update!.h.bufAlloc], [3500, 4096]);
  p.engine.close();
});

Deno.test("engine answers CREDIT_REQUEST with CREDIT_UPDATE", async () => {
  const p = new ScriptedPeer();
  await open(p, 65536);
  p.deliver({ op: OP.CREDIT_REQUEST, srcPort: 5000, dstPort: 5080 });
  const [u] = p.pump();
  assertEquals([opName(u!.h.op), u!.h.fwdCnt], ["CREDIT_UPDATE", 0]);
  p.engine.close();
});

Deno.test("a slow reader withholds credit and never buffers beyond buf_alloc", async () => {
  const p = new ScriptedPeer({ bufAlloc: 8192 });
  const conn = await open(p, 65536);
  let offered = 0;
  // A well-behaved peer sends exactly what it was granted.
  while (offered < 8192) {
    p.deliver(
      { op: OP.RW, srcPort: 5000, dstPort: 5080 },
      new Uint8Array(1024),
    );
    offered += 1024;
  }
  assertEquals(conn.unreadBytes, 8192);
  assertEquals(p.pump(), [], "no credit is returned while nothing is read");
  const reader = conn.readable.getReader();
  let read = 0;
  while (read < 8192) read += (await reader.read()).value!.length;
  const updates = p.pump().filter((s) => s.h.op === OP.CREDIT_UPDATE);
  assert(updates.length >= 1);
  assertEquals(updates.at(-1)!.h.fwdCnt, 8192, "reading returns the credit");
  p.engine.close();
});

Deno.test("a peer sending beyond its credit gets that one connection reset and nobody else notices", async () => {
  const p = new ScriptedPeer({ bufAlloc: 4096 });
  const a = await open(p, 65536, 5000);
  const b = await open(p, 65536, 6000);
  p.deliver({ op: OP.RW, srcPort: 5000, dstPort: 5080 }, new Uint8Array(4096));
  p.deliver({ op: OP.RW, srcPort: 5000, dstPort: 5080 }, new Uint8Array(1)); // one byte too many
  const sent = p.pump();
  assertEquals(sent.map((s) => [opName(s.h.op), s.h.dstPort]), [["RST", 5000]]);
  const info = await a.closed;
  assertEquals(info.reason, "EPROTO");
  assert(info.message.includes("beyond the credit"), info.message);
  // b carries on.
  p.deliver(
    { op: OP.RW, srcPort: 6000, dstPort: 6080 },
    new Uint8Array([1, 2, 3]),
  );
  const chunk = await b.readable.getReader().read();
  assertEquals([...chunk.value!], [1, 2, 3]);
  assertEquals(b.state, "established");
  p.engine.close();
});

Deno.test("every packet carries our current buf_alloc and fwd_cnt", async () => {
  const p = new ScriptedPeer({ bufAlloc: 1 << 20 });
  const conn = await open(p, 65536);
  p.deliver({ op: OP.RW, srcPort: 5000, dstPort: 5080 }, new Uint8Array(300));
  await conn.readable.getReader().read();
  const w = conn.writable.getWriter();
  w.write(new Uint8Array(10)).catch(() => {});
  await tick();
  const [rw] = p.pump();
  assertEquals([rw!.h.bufAlloc, rw!.h.fwdCnt], [conn.receiveWindow, 300]);
  assertEquals(conn.receiveWindow, p.engine.initialBufAlloc);
  p.engine.close();
});

Deno.test("a connection's receive window doubles up to the engine's bufAlloc while its reader keeps up", async () => {
  const p = new ScriptedPeer({ bufAlloc: 1 << 20 });
  const conn = await open(p, 65536);
  const reader = conn.readable.getReader();
  const windows: number[] = [];
  let sent = 0;
  // The peer sends what it believes it may, the reader takes it at once.
  for (let round = 0; round < 6; round++) {
    // Just over half the window, in 64 KiB packets, read as it comes.
    const chunk = (conn.receiveWindow >>> 1) + 4096;
    for (let at = 0; at < chunk; at += 65536) {
      const n = Math.min(65536, chunk - at);
      p.deliver(
        { op: OP.RW, srcPort: 5000, dstPort: 5080 },
        new Uint8Array(n),
      );
      await reader.read();
    }
    sent += chunk;
    const updates = p.pump().filter((s) => opName(s.h.op) === "CREDIT_UPDATE");
    assertEquals(updates.length, 1, `round ${round}: one credit update`);
    assertEquals(updates[0]!.h.fwdCnt, sent);
    windows.push(updates[0]!.h.bufAlloc);
  }
  assertEquals(windows, [
    512 << 10,
    1 << 20,
    1 << 20,
    1 << 20,
    1 << 20,
    1 << 20,
  ]);
  assertEquals(conn.state, "established");
  p.engine.close();
});

Deno.test("a connection whose reader falls behind keeps its starting window", async () => {
  const p = new ScriptedPeer({ bufAlloc: 1 << 20 });
  const conn = await open(p, 65536);
  const start = conn.receiveWindow;
  // Fill the window; the reader takes only the first half, leaving the
  // rest unread when the credit update goes out.
  const half = start >>> 1;
  p.deliver({ op: OP.RW, srcPort: 5000, dstPort: 5080 }, new Uint8Array(half));
  p.deliver({ op: OP.RW, srcPort: 5000, dstPort: 5080 }, new Uint8Array(half));
  const reader = conn.readable.getReader();
  let got = 0;
  while (got < half) got += (await reader.read()).value!.length;
  assertEquals(got, half, "one read of the first packet only");
  const [update] = p.pump().filter((s) => opName(s.h.op) === "CREDIT_UPDATE");
  assertEquals(update!.h.bufAlloc, start);
  assertEquals(conn.receiveWindow, start);
  p.engine.close();
});

Deno.test("a read joins queued packets up to a quarter of the receive window", async () => {
  const p = new ScriptedPeer({ bufAlloc: 1 << 20 });
  const conn = await open(p, 65536);
  const send = () =>
    p.deliver(
      { op: OP.RW, srcPort: 5000, dstPort: 5080 },
      new Uint8Array(65536),
    );
  // At the starting window (256 KiB), four queued packets take four reads.
  assertEquals(conn.receiveWindow, 256 << 10);
  for (let i = 0; i < 4; i++) send();
  const reads: number[] = [];
  for (let i = 0; i < 4; i++) reads.push((await conn.read())!.length);
  assertEquals(reads, [65536, 65536, 65536, 65536]);
  // A reader that keeps up grows the window to 1 MiB ...
  for (let i = 0; i < 64 && conn.receiveWindow < 1 << 20; i++) {
    p.pump();
    send();
    await conn.read();
  }
  p.pump();
  assertEquals(conn.receiveWindow, 1 << 20);
  // ... and then takes four queued packets in one read.
  for (let i = 0; i < 4; i++) send();
  assertEquals((await conn.read())!.length, 4 * 65536);
  assertEquals(conn.state, "established");
  p.engine.close();
});

Deno.test("growBufAlloc() doubles the window while under half of it is unread, up to the most", () => {
  const KiB = 1024;
  assertEquals(growBufAlloc(256 * KiB, 4096 * KiB, 0), 512 * KiB);
  assertEquals(growBufAlloc(256 * KiB, 4096 * KiB, 128 * KiB - 1), 512 * KiB);
  assertEquals(growBufAlloc(256 * KiB, 4096 * KiB, 128 * KiB), 256 * KiB);
  assertEquals(growBufAlloc(2048 * KiB, 3072 * KiB, 0), 3072 * KiB);
  assertEquals(growBufAlloc(4096 * KiB, 4096 * KiB, 0), 4096 * KiB);
});

Deno.test("a reader that leaves under half the window unread after a read grows it", async () => {
  const p = new ScriptedPeer({ bufAlloc: 1 << 20 });
  const conn = await open(p, 65536);
  // 160 KiB queued in a 256 KiB window; a read takes a quarter of the
  // window and leaves 96 KiB.
  for (const n of [65536, 65536, 32768]) {
    p.deliver({ op: OP.RW, srcPort: 5000, dstPort: 5080 }, new Uint8Array(n));
  }
  assertEquals((await conn.read())!.length, 65536);
  const [update] = p.pump().filter((s) => opName(s.h.op) === "CREDIT_UPDATE");
  assertEquals(update!.h.bufAlloc, 512 << 10);
  p.engine.close();
});
