/**
 * `VsockConnection.pipeFrom()`: a source read straight into the packets'
 * buffers, against a scripted peer. The bytes, credit, the source's end and
 * failures, and how the connection's own end stops the source.
 */
import {
  assert,
  assertEquals,
  assertRejects,
  assertStrictEquals,
} from "../../../dev_deps.ts";
import { OP, SHUTDOWN_F, TYPE } from "../../../device/packets/header.ts";
import type { Region } from "../../../device/shm/region.ts";
import type { SegmentList } from "../../../device/virtqueue/segments.ts";
import type {
  PipeSource,
  VsockConnection,
} from "../../../device/vsock/connection.ts";
import { VsockError } from "../../../device/vsock/errors.ts";
import { concatBytes } from "../../_support/concat_bytes.ts";
import { opName, ScriptedPeer, tick } from "../../_support/scripted_peer.ts";

/** A source over `data` whose behaviour each test steers. */
class FakeSource implements PipeSource {
  ready = true;
  at = 0;
  fills = 0;
  /** Most bytes one fill returns (a short read). */
  cap = Infinity;
  /** Bytes available now; fill returns 0 (and goes not-ready) beyond. */
  available: number;
  /** Return null once `data` is used up. */
  ends = true;
  /** Thrown by the next fill. */
  failWith: Error | null = null;
  /** Returned by the next fill instead of a real count. */
  lie: number | null = null;
  readonly data: Uint8Array;

  constructor(data: Uint8Array) {
    this.data = data;
    this.available = data.length;
  }

  fill(region: Region, dest: SegmentList): number | null {
    this.fills++;
    if (this.failWith !== null) throw this.failWith;
    if (this.lie !== null) return this.lie;
    if (this.at === this.data.length && this.ends) return null;
    let n = 0;
    const most = Math.min(this.cap, this.available - this.at);
    for (let i = 0; i < dest.count && n < most; i++) {
      const take = Math.min(dest.lengths[i]!, most - n);
      region.write(
        dest.offsets[i]!,
        this.data.subarray(this.at + n, this.at + n + take),
      );
      n += take;
    }
    this.at += n;
    if (n === 0) this.ready = false;
    return n;
  }
}

function pattern(n: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = (i * 7 + (i >> 9)) & 0xff;
  return out;
}

async function open(p: ScriptedPeer, bufAlloc = 256 * 1024) {
  const listener = p.engine.listen(80);
  p.deliver({ op: OP.REQUEST, srcPort: 5000, dstPort: 80, bufAlloc });
  p.pump();
  const conn = await listener.accept();
  listener.close();
  return conn;
}

/** What the peer acknowledges: it read everything sent so far. */
function grant(p: ScriptedPeer, fwdCnt: number, bufAlloc = 256 * 1024): void {
  p.deliver({
    op: OP.CREDIT_UPDATE,
    srcPort: 5000,
    dstPort: 80,
    bufAlloc,
    fwdCnt,
  });
}

function rwBytes(p: ScriptedPeer): Uint8Array {
  return concatBytes(
    p.sent.filter((s) => s.h.op === OP.RW).map((s) => s.payload),
  );
}

Deno.test("piped bytes go out in order within the peer's credit, and only credit lets more out", async () => {
  const p = new ScriptedPeer();
  const conn = await open(p, 100_000);
  const data = pattern(1_000_000);
  const src = new FakeSource(data);
  src.ends = false;
  const piped = conn.pipeFrom(src);
  let sent = 0;
  for (let round = 0; round < 40 && sent < data.length; round++) {
    p.pump();
    const now = rwBytes(p).length;
    assert(
      now - sent <= 100_000,
      `round ${round}: sent ${now - sent} on 100,000 of credit`,
    );
    assertEquals(
      p.pump().filter((s) => s.h.op === OP.RW),
      [],
      "nothing more without credit",
    );
    sent = now;
    grant(p, sent, 100_000);
  }
  assertEquals(rwBytes(p), data);
  for (const s of p.sent.filter((s) => s.h.op === OP.RW)) {
    assert(s.h.len > 0 && s.h.len <= 65536);
  }
  conn.reset();
  await assertRejects(() => piped, VsockError);
  p.engine.close();
});

Deno.test("the engine counts every packet a pull sends", async () => {
  const p = new ScriptedPeer();
  const conn = await open(p);
  const src = new FakeSource(pattern(200_000));
  src.ends = false;
  const piped = conn.pipeFrom(src);
  const before = p.engine.stats.packetsOut.RW ?? 0;
  p.pump();
  const rw = p.sent.filter((s) => s.h.op === OP.RW).length;
  assertEquals(rw, 4, "200,000 bytes as three full packets and a short one");
  assertEquals((p.engine.stats.packetsOut.RW ?? 0) - before, rw);
  conn.reset();
  await assertRejects(() => piped);
  p.engine.close();
});

Deno.test("a source with nothing is not asked again until it says it is ready", async () => {
  const p = new ScriptedPeer();
  const conn = await open(p);
  const src = new FakeSource(pattern(10_000));
  src.ends = false;
  src.available = 3_000;
  const piped = conn.pipeFrom(src);
  p.pump();
  assertEquals(rwBytes(p).length, 3_000);
  const fills = src.fills;
  assertEquals(src.ready, false);
  assertEquals(p.pump(), []);
  assertEquals(src.fills, fills, "not-ready source left alone");
  src.available = 10_000;
  src.ready = true;
  conn.sourceReady(src);
  p.pump();
  assertEquals(rwBytes(p), src.data);
  conn.reset();
  await assertRejects(() => piped);
  p.engine.close();
});

Deno.test("the source's end of input sends SHUTDOWN(SEND) after its bytes and resolves the pipe", async () => {
  const p = new ScriptedPeer();
  const conn = await open(p);
  const src = new FakeSource(pattern(70_000));
  src.cap = 30_000;
  const piped = conn.pipeFrom(src);
  for (let i = 0; i < 5; i++) p.pump();
  await piped;
  const ops = p.sent.map((s) => opName(s.h.op));
  assertEquals(ops.slice(1), ["RW", "RW", "RW", "SHUTDOWN"]);
  assertEquals(p.sent.at(-1)!.h.flags, SHUTDOWN_F.SEND);
  assertEquals(rwBytes(p), src.data);
  assertEquals(
    conn.state,
    "established",
    "reading goes on after our half-close",
  );
  conn.reset();
  p.engine.close();
});

Deno.test("writes queued before a pipe go out first", async () => {
  const p = new ScriptedPeer();
  const conn = await open(p);
  const first = new Uint8Array([1, 2, 3]);
  const written = conn.write(first);
  const src = new FakeSource(new Uint8Array([4, 5]));
  const piped = conn.pipeFrom(src);
  p.pump();
  p.pump();
  await written;
  await piped;
  assertEquals([...rwBytes(p)], [1, 2, 3, 4, 5]);
  conn.reset();
  p.engine.close();
});

Deno.test("a source that throws rejects the pipe with its error and sends nothing", async () => {
  const p = new ScriptedPeer();
  const conn = await open(p);
  const src = new FakeSource(pattern(1000));
  const boom = new Error("socket reset");
  src.failWith = boom;
  const piped = conn.pipeFrom(src);
  p.pump();
  const err = await assertRejects(() => piped);
  assertStrictEquals(err, boom);
  assertEquals(p.sent.filter((s) => s.h.op === OP.RW), []);
  const fills = src.fills;
  p.pump();
  assertEquals(src.fills, fills, "a failed source is dropped");
  assertEquals(
    conn.state,
    "established",
    "the owner decides what a failed source means",
  );
  conn.reset();
  p.engine.close();
});

Deno.test("a source claiming more bytes than it had room for is refused", async () => {
  const p = new ScriptedPeer();
  const conn = await open(p, 1000);
  const src = new FakeSource(pattern(5000));
  src.lie = 1001;
  const piped = conn.pipeFrom(src);
  p.pump();
  await assertRejects(() => piped, RangeError);
  assertEquals(p.sent.filter((s) => s.h.op === OP.RW), []);
  conn.reset();
  p.engine.close();
});

Deno.test("the peer's reset and SHUTDOWN(RCV) reject the pipe with a VsockError and stop the source", async () => {
  for (const how of ["reset", "shutdown"] as const) {
    const p = new ScriptedPeer();
    const conn = await open(p);
    const src = new FakeSource(pattern(10_000));
    src.ends = false;
    src.available = 0;
    src.ready = false;
    const piped = conn.pipeFrom(src);
    if (how === "reset") {
      p.deliver({ op: OP.RST, srcPort: 5000, dstPort: 80 });
    } else {
      p.deliver({
        op: OP.SHUTDOWN,
        srcPort: 5000,
        dstPort: 80,
        flags: SHUTDOWN_F.RCV,
      });
    }
    const err = await assertRejects(() => piped, VsockError);
    assertEquals(err.code, how === "reset" ? "ECONNRESET" : "EPIPE");
    src.available = 10_000;
    src.ready = true;
    conn.sourceReady(src);
    p.pump();
    assertEquals(src.fills, 0, `${how}: the source is never read again`);
    conn.reset();
    p.engine.close();
  }
});

Deno.test("close() ends the pipe and unpipe() rejects it with the reason given", async () => {
  const p = new ScriptedPeer();
  const a = await open(p);
  const src = new FakeSource(pattern(10));
  src.ready = false;
  const piped = a.pipeFrom(src);
  a.close();
  await piped;
  src.ready = true;
  a.sourceReady(src);
  p.pump();
  assertEquals(src.fills, 0);
  a.reset();
  p.engine.close();

  const q = new ScriptedPeer();
  const b = await open(q);
  const why = new Error("socket closed");
  const src2 = new FakeSource(pattern(10));
  src2.ready = false;
  const piped2 = b.pipeFrom(src2);
  b.unpipe(new FakeSource(pattern(1)), new Error("stale"));
  b.sourceReady(new FakeSource(pattern(1)));
  q.pump();
  assertEquals(src2.fills, 0, "another source's calls touch nothing");
  b.unpipe(src2, why);
  assertStrictEquals(await assertRejects(() => piped2), why);
  b.reset();
  q.engine.close();
});

Deno.test("pipeFrom refuses a second source, a SEQPACKET connection, and a connection that no longer sends", async () => {
  const p = new ScriptedPeer();
  const conn: VsockConnection = await open(p);
  const src = new FakeSource(pattern(10));
  src.ready = false;
  const piped = conn.pipeFrom(src);
  await assertRejects(
    () => conn.pipeFrom(new FakeSource(pattern(1))),
    TypeError,
  );
  conn.unpipe(src, new Error("done"));
  await assertRejects(() => piped);
  conn.closeWrite();
  const late = await assertRejects(
    () => conn.pipeFrom(new FakeSource(pattern(1))),
    VsockError,
  );
  assertEquals(late.code, "EPIPE");
  conn.reset();
  await tick();
  p.engine.close();

  const q = new ScriptedPeer();
  const listener = q.engine.listen(81, { type: "seqpacket" });
  q.deliver({
    op: OP.REQUEST,
    srcPort: 6000,
    dstPort: 81,
    type: TYPE.SEQPACKET,
  });
  q.pump();
  const seq = await listener.accept();
  listener.close();
  await assertRejects(
    () => seq.pipeFrom(new FakeSource(pattern(1))),
    TypeError,
  );
  seq.reset();
  q.engine.close();
});

Deno.test("the source's end is answered in the same turn: SHUTDOWN(SEND) goes out with the last bytes", async () => {
  const p = new ScriptedPeer();
  const conn = await open(p);
  const src = new FakeSource(pattern(1000));
  const piped = conn.pipeFrom(src);
  assertEquals(
    p.pumpOps(),
    ["RW", "SHUTDOWN"],
    "one transmit: the data, then the end the source found",
  );
  await piped;
  const empty = new ScriptedPeer();
  const c2 = await open(empty);
  const piped2 = c2.pipeFrom(new FakeSource(new Uint8Array(0)));
  assertEquals(empty.pumpOps(), ["SHUTDOWN"]);
  await piped2;
  conn.reset();
  c2.reset();
  p.engine.close();
  empty.engine.close();
});

Deno.test("closeWrite() during a pipe ends it: the source is not read again and SHUTDOWN(SEND) goes out", async () => {
  const p = new ScriptedPeer();
  const conn = await open(p);
  const src = new FakeSource(pattern(10_000));
  src.ends = false;
  src.available = 0;
  src.ready = false;
  const piped = conn.pipeFrom(src);
  conn.closeWrite();
  await piped;
  src.available = 10_000;
  src.ready = true;
  conn.sourceReady(src);
  assertEquals(p.pumpOps(), ["SHUTDOWN"]);
  assertEquals(src.fills, 0);
  conn.reset();
  p.engine.close();
});
