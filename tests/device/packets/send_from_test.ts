/**
 * DeviceRx.sendFrom and DriverTx.sendFrom: packets whose payload a byte
 * source reads straight into the buffers. What the other side receives is the
 * source's stream, byte for byte, in packets with the right headers; a short
 * read sends a prefix and wastes no buffer or transmit space; a source that
 * has nothing, ends or fails sends nothing; and the ranges the source is
 * given are payload only, inside the region.
 */
import { assert, assertEquals, assertThrows } from "../../../dev_deps.ts";
import { concatBytes } from "../../_support/concat_bytes.ts";
import { Prng } from "../../_support/prng.ts";
import {
  dataHeader,
  makeQueuePair,
  type QueuePair,
  type QueuePairOptions,
} from "../../_support/queue_pair.ts";
import { ByteRing } from "../../../device/packets/byte_ring.ts";
import { DriverTx } from "../../../device/packets/driver_tx.ts";
import {
  type ByteSource,
  FILL_BYTES,
  FILL_PACKETS,
  SourceFailure,
} from "../../../device/packets/byte_source.ts";
import {
  HDR_LEN,
  MAX_PAYLOAD,
  MRG_HDR_LEN,
  NUM_BUFFERS_OFFSET,
  type PacketHeader,
} from "../../../device/packets/header.ts";
import type { Region } from "../../../device/shm/region.ts";
import { SegmentList } from "../../../device/virtqueue/segments.ts";

// ---------------------------------------------------------------------------
// A fake byte source

/**
 * What one `fill` does: read all it can, read at most `n` bytes, return 0
 * ("zero"), return null ("end"), throw ("throw"), or return a count it has
 * no right to (`{ returns }`).
 */
type Reply = "all" | number | "zero" | "end" | "throw" | { returns: number };

/** Written over every byte of the given ranges the source did not read. */
const SCRIBBLE = 0xee;

/**
 * Serves `data` front to back into the ranges it is given, recording them.
 * Bytes of the ranges it does not fill are scribbled over, so that a sink
 * that published more than the count would be caught.
 */
class FakeSource implements ByteSource {
  pos = 0;
  /** Each call's ranges, as [offset, length]. */
  calls: Array<Array<[number, number]>> = [];
  /** Replies for the next calls, in order; then `otherwise`. */
  replies: Reply[] = [];
  otherwise: Reply = "all";
  /** Return null rather than 0 once all of `data` is read. */
  endAtEof = true;
  /** Scribble over unread bytes (off where a test loops thousands of times). */
  scribble = true;

  constructor(
    readonly data: Uint8Array,
    /** Where every range must lie (besides inside the region). */
    readonly window: { start: number; end: number },
  ) {}

  get left(): number {
    return this.data.length - this.pos;
  }

  /** Takes `n` bytes of the stream for a plain put()/send(). */
  take(n: number): Uint8Array {
    const out = this.data.subarray(this.pos, this.pos + n);
    this.pos += out.length;
    return out;
  }

  fill(region: Region, dest: SegmentList): number | null {
    const ranges: Array<[number, number]> = [];
    let total = 0;
    for (let i = 0; i < dest.count; i++) {
      const o = dest.offsets[i]!;
      const l = dest.lengths[i]!;
      assert(l > 0, `range ${i} is empty`);
      assert(region.contains(o, l), `range ${o}+${l} is outside the region`);
      assert(
        o >= this.window.start && o + l <= this.window.end,
        `range ${o}+${l} is outside [${this.window.start}, ${this.window.end})`,
      );
      ranges.push([o, l]);
      total += l;
    }
    assertEquals(total, dest.bytes, "dest.bytes is the ranges' sum");
    assert(total > 0, "fill is never asked for nothing");
    this.calls.push(ranges);
    const reply = this.replies.shift() ?? this.otherwise;
    let n = 0;
    if (reply === "all" || typeof reply === "number") {
      const cap = reply === "all" ? Infinity : reply;
      n = Math.min(total, this.left, cap);
      if (n === 0 && this.left === 0 && this.endAtEof) return null;
    }
    // Copy n bytes in order, scribble over the rest.
    let done = 0;
    for (const [o, l] of ranges) {
      const take = Math.min(l, n - done);
      if (take > 0) {
        region.span(o, take).set(
          this.data.subarray(this.pos + done, this.pos + done + take),
        );
        done += take;
      }
      if (this.scribble) region.span(o + take, l - take).fill(SCRIBBLE);
    }
    this.pos += n;
    if (reply === "zero") return 0;
    if (reply === "end") return null;
    if (reply === "throw") throw new Error("connection reset by peer");
    if (typeof reply === "object") return reply.returns;
    return n;
  }
}

// ---------------------------------------------------------------------------
// Helpers

/** A data header with every field but len set to something recognisable. */
function header(): PacketHeader {
  const h = dataHeader();
  h.flags = 0x5a5a;
  h.bufAlloc = 262_144;
  h.fwdCnt = 123_456_789;
  return h;
}

function sameButLen(got: PacketHeader, want: PacketHeader, msg: string) {
  assertEquals({ ...got, len: 0 }, { ...want, len: 0 }, msg);
}

/** One received packet as a test sees it. */
interface Got {
  header: PacketHeader;
  payload: Uint8Array;
  /** Buffers (driver side) or payload chunks (device side). */
  buffers: number;
  /** num_buffers from the header, mergeable rx only. */
  numBuffers?: number;
  /** Region ranges of the payload, [offset, length]. */
  ranges: Array<[number, number]>;
}

/**
 * Runs `fn`, which must throw a SourceFailure whose cause is a `Cause`
 * whose message includes `text`: the sinks' word for "the source failed".
 */
function assertSourceFailure(
  fn: () => unknown,
  Cause: new (...args: never[]) => Error,
  text: string,
): void {
  const err = assertThrows(fn, SourceFailure);
  assert(err.cause instanceof Cause, `cause ${String(err.cause)}`);
  assert(
    (err.cause as Error).message.includes(text),
    `cause says ${(err.cause as Error).message}`,
  );
}

/** Everything the driver has received; reposts the buffers. */
function driverReceives(p: QueuePair): Got[] {
  const out: Got[] = [];
  while (p.driverRx.next()) {
    const pk = p.driverRx.packet;
    const ranges: Array<[number, number]> = [];
    for (let i = 0; i < pk.count; i++) {
      ranges.push([pk.chunks[i]!.byteOffset, pk.chunks[i]!.length]);
    }
    const got: Got = {
      header: { ...pk.header },
      payload: pk.payloadCopy(),
      buffers: pk.count,
      ranges,
    };
    if (p.driverRx.mergeable && pk.count > 0) {
      got.numBuffers = p.region.getU16(
        pk.chunks[0]!.byteOffset - MRG_HDR_LEN + NUM_BUFFERS_OFFSET,
      );
    }
    out.push(got);
  }
  p.driverRxQ.publish();
  return out;
}

/** Publishes what the driver added; everything the device then receives. */
function deviceReceives(p: QueuePair): Got[] {
  p.driverTxQ.publish();
  const regionBuffer = p.region.span(0, 1).buffer;
  const out: Got[] = [];
  while (p.deviceTx.next()) {
    const pk = p.deviceTx.packet;
    const ranges: Array<[number, number]> = [];
    for (let i = 0; i < pk.count; i++) {
      const c = pk.chunks[i]!;
      assert(c.buffer === regionBuffer, "payload read in place, not copied");
      ranges.push([c.byteOffset, c.length]);
    }
    out.push({
      header: { ...pk.header },
      payload: pk.payloadCopy(),
      buffers: pk.count,
      ranges,
    });
  }
  p.deviceTx.flush();
  return out;
}

/** Ranges with touching neighbours joined, the first `bytes` bytes only. */
function flatten(
  ranges: Array<[number, number]>,
  bytes = Infinity,
): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (const [o, l0] of ranges) {
    const l = Math.min(l0, bytes);
    if (l <= 0) break;
    bytes -= l;
    const last = out[out.length - 1];
    if (last && last[0] + last[1] === o) last[1] += l;
    else out.push([o, l]);
  }
  return out;
}

/**
 * Byte-for-byte equality that fails fast with the first difference (a deep
 * diff of two large arrays takes seconds to print).
 */
function assertBytes(actual: Uint8Array, expected: Uint8Array, msg = "") {
  const n = Math.min(actual.length, expected.length);
  let i = 0;
  while (i < n && actual[i] === expected[i]) i++;
  if (i === n && actual.length === expected.length) return;
  assert(
    false,
    `${msg}: ${actual.length} bytes where ${expected.length} were expected, first difference at ${i} (${
      actual[i]
    } instead of ${expected[i]})`,
  );
}

/**
 * Checks one successful sendFrom: the packets are the source's next `n`
 * bytes, carry `h` but for len, and their payload is exactly the first `n`
 * bytes of the ranges fill was given (so no header byte was among them).
 */
function checkCall(
  got: Got[],
  n: number,
  source: FakeSource,
  from: number,
  h: PacketHeader,
  filledPackets: number,
  label: string,
) {
  assertEquals(got.length, filledPackets, `filledPackets, ${label}`);
  const payload = concatBytes(got.map((g) => g.payload));
  assertEquals(payload.length, n, `bytes received, ${label}`);
  assertBytes(payload, source.data.subarray(from, from + n), label);
  for (const g of got) {
    assertEquals(g.header.len, g.payload.length, label);
    assert(g.header.len > 0 && g.header.len <= MAX_PAYLOAD, label);
    sameButLen(g.header, h, label);
  }
  const ranges = source.calls[source.calls.length - 1]!;
  assertEquals(
    flatten(got.flatMap((g) => g.ranges)),
    flatten(ranges, n),
    `payload sits exactly in the first ${n} bytes of the fill ranges, ${label}`,
  );
}

// ---------------------------------------------------------------------------
// DeviceRx.sendFrom

interface RxMode {
  mergeable: boolean;
  bufferSize: number;
}

const RX_MODES: RxMode[] = [
  { mergeable: true, bufferSize: 4096 },
  { mergeable: true, bufferSize: 65536 },
  { mergeable: false, bufferSize: 4096 },
  { mergeable: false, bufferSize: 65536 },
];

function rxName(m: RxMode): string {
  return `${m.mergeable ? "mergeable" : "one-buffer"} ${
    m.bufferSize / 1024
  } KiB`;
}

function rxPair(m: RxMode, extra: Partial<QueuePairOptions> = {}) {
  const p = makeQueuePair({ queueSize: 128, ...m, ...extra });
  const rxEnd = p.bufferStart + p.driverRx.slots * m.bufferSize;
  return { p, window: { start: p.bufferStart, end: rxEnd } };
}

/** Packet sizes put() makes when each takes what room() offers. */
function roomShapes(m: RxMode, data: Uint8Array): Got[] {
  const { p } = rxPair(m);
  const out: Got[] = [];
  let at = 0;
  while (at < data.length) {
    const n = Math.min(p.deviceRx.room(), data.length - at);
    assert(n > 0);
    assert(p.deviceRx.put(header(), data.subarray(at, at + n)));
    at += n;
    out.push(...driverReceives(p));
  }
  return out;
}

function shape(got: Got[]) {
  return got.map((g) => ({
    len: g.header.len,
    buffers: g.buffers,
    numBuffers: g.numBuffers,
  }));
}

for (const m of RX_MODES) {
  const name = rxName(m);
  const hdrLen = m.mergeable ? MRG_HDR_LEN : HDR_LEN;

  Deno.test(`DeviceRx.sendFrom (${name}) delivers the source's bytes in packets shaped as room() shapes them`, () => {
    const { p, window } = rxPair(m);
    const data = new Prng(11).bytes(150_000);
    const source = new FakeSource(data, window);
    const h = header();
    const n = p.deviceRx.sendFrom(h, FILL_BYTES, source);
    assertEquals(n, data.length);
    assertEquals(source.calls.length, 1, "one fill per call");
    const got = driverReceives(p);
    checkCall(got, n, source, 0, h, p.deviceRx.filledPackets, name);
    assertEquals(shape(got), shape(roomShapes(m, data)));
    for (const g of got) {
      assertEquals(
        g.buffers,
        Math.ceil((hdrLen + g.header.len) / m.bufferSize),
        "buffers filled up to the packet's end, no more",
      );
      if (m.mergeable) assertEquals(g.numBuffers, g.buffers, "num_buffers");
      else assertEquals(g.buffers, 1);
    }
    assertEquals(p.deviceRx.sendFrom(h, FILL_BYTES, source), -1, "the end");
    assertEquals(p.deviceRx.filledPackets, 0);
    assertEquals(driverReceives(p), []);
    assertEquals([p.deviceDrops, p.driverErrors], [[], []]);
  });

  Deno.test(`DeviceRx.sendFrom (${name}) pulls as many whole packets as fit in FILL_BYTES, at most FILL_PACKETS, with no runt at the end`, () => {
    const { p, window } = rxPair(m);
    const data = new Prng(12).bytes(700_000);
    const source = new FakeSource(data, window);
    const h = header();
    let at = 0;
    while (source.left > 0) {
      const n = p.deviceRx.sendFrom(h, 1 << 30, source);
      assert(n > 0 && n <= FILL_BYTES);
      const ranges = source.calls[source.calls.length - 1]!;
      const asked = ranges.reduce((s, [, l]) => s + l, 0);
      assert(asked <= FILL_BYTES, `fill asked for ${asked}`);
      assert(p.deviceRx.filledPackets <= FILL_PACKETS);
      const got = driverReceives(p);
      if (source.left > 0) {
        // Buffers for a whole pull are posted: it is capped by one limit,
        // in packets of one size (the cap never cuts one short).
        if (!m.mergeable && m.bufferSize === 4096) {
          assertEquals(n, FILL_PACKETS * (m.bufferSize - HDR_LEN));
          assertEquals(p.deviceRx.filledPackets, FILL_PACKETS);
        } else {
          // Four full packets: a fifth would not fit in FILL_BYTES.
          assertEquals(p.deviceRx.filledPackets, 4);
        }
        const sizes = new Set(got.map((g) => g.payload.length));
        assertEquals(sizes.size, 1, `packet sizes ${[...sizes]}`);
      }
      checkCall(got, n, source, at, h, p.deviceRx.filledPackets, name);
      at += n;
    }
    assertEquals(at, data.length);
  });

  Deno.test(`DeviceRx.sendFrom (${name}) after a short read sends a prefix and keeps the rest of the buffers for the next packet`, () => {
    const { p, window } = rxPair(m);
    const data = new Prng(13).bytes(40_000);
    const source = new FakeSource(data, window);
    const h = header();
    const received: Uint8Array[] = [];
    let at = 0;
    let calls = 0;
    for (;;) {
      source.replies.push(5000);
      const before = source.pos;
      const n = p.deviceRx.sendFrom(h, FILL_BYTES, source);
      if (n === -1) break;
      calls++;
      assertEquals(n, Math.min(5000, data.length - before));
      const got = driverReceives(p);
      checkCall(got, n, source, at, h, p.deviceRx.filledPackets, name);
      const want = m.mergeable || m.bufferSize === 65536
        ? [n]
        : [Math.min(n, 4052), n - 4052].filter((x) => x > 0);
      assertEquals(got.map((g) => g.header.len), want, "packet sizes");
      received.push(...got.map((g) => g.payload));
      at += n;
      // Every other time, a plain put() goes in between.
      if (calls % 2 === 0 && source.left > 0) {
        const chunk = source.take(Math.min(777, source.left));
        assert(p.deviceRx.put(h, chunk));
        const g = driverReceives(p);
        assertEquals(g.length, 1);
        assertBytes(g[0]!.payload, chunk, "the put() packet");
        received.push(chunk);
        at += chunk.length;
      }
    }
    assertBytes(concatBytes(received), data, "no byte lost or repeated");
    assertEquals([p.deviceDrops, p.driverErrors], [[], []]);
  });

  Deno.test(`DeviceRx.sendFrom (${name}) does not publish a single byte past a short read even without the driver draining`, () => {
    const { p, window } = rxPair(m);
    const data = new Prng(14).bytes(30_000);
    const source = new FakeSource(data, window);
    const h = header();
    const counts = [1, 4051, 4052, 4053, 46, 3000];
    let total = 0;
    for (const k of counts) {
      source.replies.push(k);
      assertEquals(p.deviceRx.sendFrom(h, FILL_BYTES, source), k);
      total += k;
    }
    // Only now does the driver look: six calls, in order, nothing extra.
    const got = driverReceives(p);
    assertBytes(
      concatBytes(got.map((g) => g.payload)),
      data.subarray(0, total),
    );
    for (const g of got) sameButLen(g.header, h, name);
    assertEquals([p.deviceDrops, p.driverErrors], [[], []]);
  });

  Deno.test(`DeviceRx.sendFrom (${name}) publishes nothing when the source has nothing, has ended, fails or lies`, () => {
    const { p, window } = rxPair(m);
    const data = new Prng(15).bytes(9000);
    const source = new FakeSource(data, window);
    const h = header();
    source.replies.push("zero");
    assertEquals(p.deviceRx.sendFrom(h, FILL_BYTES, source), 0);
    assertEquals(p.deviceRx.filledPackets, 0);
    source.replies.push("end");
    assertEquals(p.deviceRx.sendFrom(h, FILL_BYTES, source), -1);
    assertEquals(p.deviceRx.filledPackets, 0);
    source.replies.push("throw");
    assertSourceFailure(
      () => p.deviceRx.sendFrom(h, FILL_BYTES, source),
      Error,
      "connection reset",
    );
    assertEquals(p.deviceRx.filledPackets, 0);
    for (const bad of [-1, 1.5, NaN, FILL_BYTES + 1]) {
      source.replies.push({ returns: bad });
      assertSourceFailure(
        () => p.deviceRx.sendFrom(h, FILL_BYTES, source),
        RangeError,
        "a byte source returned",
      );
    }
    const room = source.calls[0]!.reduce((s, [, l]) => s + l, 0);
    assertEquals(p.deviceRx.filledPackets, 0);
    assertEquals(driverReceives(p), [], "the driver saw nothing");
    assertEquals(p.deviceRxQ.stats.used, 0, "no buffer was returned");
    const first = source.calls[0]!;
    for (const c of source.calls) {
      assertEquals(c, first, "the same buffers are offered every time");
    }
    // Each failed fill scribbled: the next send still carries the stream.
    source.pos = 0;
    const n = p.deviceRx.sendFrom(h, FILL_BYTES, source);
    assertEquals(n, Math.min(data.length, room));
    assertEquals(source.calls[source.calls.length - 1], first);
    const got = driverReceives(p);
    checkCall(got, n, source, 0, h, p.deviceRx.filledPackets, name);
    assertEquals([p.deviceDrops, p.driverErrors], [[], []]);
  });

  Deno.test(`DeviceRx.sendFrom (${name}) sends no more than max`, () => {
    const { p, window } = rxPair(m);
    const data = new Prng(16).bytes(30_000);
    const source = new FakeSource(data, window);
    const h = header();
    assertEquals(p.deviceRx.sendFrom(h, 0, source), 0, "max 0");
    assertEquals(p.deviceRx.sendFrom(h, -5, source), 0, "max below 0");
    assertEquals(source.calls.length, 0, "fill is not asked for nothing");
    let at = 0;
    for (const max of [1, 100, hdrLen, 5000, 4050, 4052, 9000]) {
      const n = p.deviceRx.sendFrom(h, max, source);
      assertEquals(n, max);
      assertEquals(
        source.calls[source.calls.length - 1]!.reduce((s, [, l]) => s + l, 0),
        max,
        "fill is asked for exactly max",
      );
      const got = driverReceives(p);
      checkCall(got, n, source, at, h, p.deviceRx.filledPackets, `max ${max}`);
      at += n;
    }
    assertEquals([p.deviceDrops, p.driverErrors], [[], []]);
  });

  Deno.test(`DeviceRx.sendFrom (${name}) returns 0 without asking the source when no buffer is posted`, () => {
    const { p, window } = rxPair(m, { queueSize: 4 });
    const data = new Prng(17).bytes(4 * 65536 * 2);
    const source = new FakeSource(data, window);
    const h = header();
    const n1 = p.deviceRx.sendFrom(h, FILL_BYTES, source);
    const packets1 = p.deviceRx.filledPackets;
    assert(n1 > 0);
    assertEquals(p.deviceRx.held, 0, "every posted buffer went");
    assertEquals(p.deviceRx.sendFrom(h, FILL_BYTES, source), 0);
    assertEquals(source.calls.length, 1, "the source was not asked");
    assertEquals(p.deviceRx.room(), -1);
    const got = driverReceives(p);
    assertEquals(p.deviceRx.filledPackets, 0, "the last call sent nothing");
    checkCall(got, n1, source, 0, h, packets1, name);
    const n2 = p.deviceRx.sendFrom(h, FILL_BYTES, source);
    assert(n2 > 0, "sending resumes once buffers come back");
    checkCall(
      driverReceives(p),
      n2,
      source,
      n1,
      h,
      p.deviceRx.filledPackets,
      name,
    );
  });
}

Deno.test("DeviceRx.sendFrom on a source that claims all its room sends all of it", () => {
  const { p, window } = rxPair({ mergeable: true, bufferSize: 4096 });
  const source = new FakeSource(new Uint8Array(0), window);
  source.replies.push({ returns: 6000 });
  const n = p.deviceRx.sendFrom(header(), 6000, source);
  assertEquals(
    n,
    6000,
    "a count equal to the room is accepted",
  );
  const got = driverReceives(p);
  assertEquals(got.reduce((s, g) => s + g.header.len, 0), 6000);
  assertBytes(
    concatBytes(got.map((g) => g.payload)),
    new Uint8Array(6000).fill(SCRIBBLE),
  );
});

Deno.test("DeviceRx.sendFrom never hands the source a header byte when buffers are split into small descriptors", () => {
  for (const mergeable of [true, false]) {
    // 200-byte buffers of 30-byte descriptors: a header spans two or more.
    const m = { mergeable, bufferSize: 200 };
    const { p, window } = rxPair(m, { queueSize: 256, descriptorBytes: 30 });
    const data = new Prng(18).bytes(20_000);
    const source = new FakeSource(data, window);
    const h = header();
    let at = 0;
    for (const reply of ["all", 1, 155, 154, 157, 600, "all", 2000] as const) {
      source.replies.push(reply);
      const n = p.deviceRx.sendFrom(h, FILL_BYTES, source);
      assert(n > 0);
      const label = `${mergeable ? "mergeable" : "one-buffer"}, reply ${reply}`;
      const got = driverReceives(p);
      checkCall(got, n, source, at, h, p.deviceRx.filledPackets, label);
      at += n;
    }
    assertEquals([p.deviceDrops, p.driverErrors], [[], []]);
  }
});

// ---------------------------------------------------------------------------
// DriverTx.sendFrom

/**
 * A queue pair whose driver transmits through a DriverTx of our own over a
 * ByteRing we can watch (`ringBytes` long, after one 4 KiB receive buffer).
 */
function txPair(
  o: { queueSize?: number; splitHeader?: boolean; ringBytes?: number } = {},
) {
  const queueSize = o.queueSize ?? 64;
  const p = makeQueuePair({
    queueSize,
    mergeable: true,
    bufferSize: 4096,
    rxBytes: 4096,
  });
  const start = p.bufferStart + 4096;
  const size = o.ringBytes ?? p.region.size - start;
  const ring = new ByteRing(start, size, queueSize);
  const tx = new DriverTx(p.driverTxQ, ring, {
    splitHeader: o.splitHeader ?? false,
  });
  return { p, ring, tx, window: { start, end: start + size } };
}

for (const splitHeader of [false, true]) {
  const name = splitHeader ? "split header" : "one descriptor";

  Deno.test(`DriverTx.sendFrom (${name}) delivers the source's bytes in full-size packets`, () => {
    const { p, ring, tx, window } = txPair({ splitHeader });
    const data = new Prng(21).bytes(200_000);
    const source = new FakeSource(data, window);
    const h = header();
    const n = tx.sendFrom(h, 1 << 30, source);
    assertEquals(n, 200_000);
    assertEquals(tx.filledPackets, 4);
    assertEquals(
      source.calls[0]!.map(([, l]) => l),
      [MAX_PAYLOAD, MAX_PAYLOAD, MAX_PAYLOAD, MAX_PAYLOAD],
      "one pull of FILL_BYTES",
    );
    assertEquals(
      ring.used,
      4 * HDR_LEN + 200_000,
      "the last packet's unused space went back",
    );
    const got = deviceReceives(p);
    checkCall(got, n, source, 0, h, tx.filledPackets, name);
    assertEquals(got.map((g) => g.header.len), [65536, 65536, 65536, 3392]);
    // Each header sits right before its payload.
    for (const g of got) {
      const [offset] = g.ranges[0]!;
      assertEquals(
        p.region.getU32(offset - HDR_LEN + 24),
        g.header.len,
        "the len field of the header right before the payload",
      );
    }
    tx.reclaim();
    assertEquals(ring.used, 0);
    assertEquals(tx.sendFrom(h, 1 << 30, source), -1, "the end");
    assertEquals(ring.used, 0);
    assertEquals(p.deviceDrops, []);
  });

  Deno.test(`DriverTx.sendFrom (${name}) posts header and payload as ${splitHeader ? "two descriptors" : "one descriptor"}`, () => {
    const { p, tx, window } = txPair({ splitHeader });
    const data = new Prng(22).bytes(70_000);
    const source = new FakeSource(data, window);
    assertEquals(tx.sendFrom(header(), 1 << 30, source), 70_000);
    p.driverTxQ.publish();
    const ranges = source.calls[0]!;
    const lens = [65536, 70_000 - 65536];
    const segs = new SegmentList();
    for (let i = 0; i < 2; i++) {
      segs.clear();
      const head = p.deviceTxQ.pop(segs);
      assert(head >= 0);
      const [payloadAt] = ranges[i]!;
      const want = splitHeader
        ? [[payloadAt - HDR_LEN, HDR_LEN], [payloadAt, lens[i]]]
        : [[payloadAt - HDR_LEN, HDR_LEN + lens[i]!]];
      const seen: Array<Array<number | undefined>> = [];
      for (let j = 0; j < segs.count; j++) {
        seen.push([segs.offsets[j], segs.lengths[j]]);
      }
      assertEquals(seen, want, `packet ${i}`);
      p.deviceTxQ.push(head, 0);
    }
    assertEquals(p.deviceTxQ.pop(segs), -1);
  });

  Deno.test(`DriverTx.sendFrom (${name}) gives back the space a short read did not fill`, () => {
    const { p, ring, tx, window } = txPair({ splitHeader });
    const data = new Prng(23).bytes(200_000);
    const source = new FakeSource(data, window);
    const h = header();
    const freeBefore = p.driverTxQ.freeCount;
    let expectUsed = 0;
    let lastEnd = window.start;
    let at = 0;
    const perPacket = splitHeader ? 2 : 1;
    let packets = 0;
    for (const k of [1, 44, 65535, 65536, 100, 7000]) {
      source.replies.push(k);
      const n = tx.sendFrom(h, 1 << 30, source);
      assertEquals(n, Math.min(k, data.length - at));
      const ranges = source.calls[source.calls.length - 1]!;
      assertEquals(
        ranges[0]![0],
        lastEnd + HDR_LEN,
        "the pull starts right after the previous packet's kept bytes",
      );
      expectUsed += HDR_LEN * tx.filledPackets + n;
      packets += tx.filledPackets;
      assertEquals(ring.used, expectUsed, `used after reading ${k}`);
      assertEquals(p.driverTxQ.freeCount, freeBefore - perPacket * packets);
      lastEnd = window.start + expectUsed;
      at += n;
    }
    const got = deviceReceives(p);
    assertBytes(concatBytes(got.map((g) => g.payload)), data.subarray(0, at));
    assertEquals(got.map((g) => g.header.len), [
      1,
      44,
      65535,
      65536,
      100,
      7000,
    ]);
    tx.reclaim();
    assertEquals(ring.used, 0);
    assertEquals(p.driverTxQ.freeCount, freeBefore);
  });

  Deno.test(`DriverTx.sendFrom (${name}) sends nothing and keeps no space when the source has nothing, has ended, fails or lies`, () => {
    const { p, ring, tx, window } = txPair({ splitHeader });
    const data = new Prng(24).bytes(10_000);
    const source = new FakeSource(data, window);
    const h = header();
    // Something already in flight, so that the ring is not empty.
    source.replies.push(300);
    assertEquals(tx.sendFrom(h, 1 << 30, source), 300);
    const used = ring.used;
    const free = p.driverTxQ.freeCount;
    const replies: Reply[] = [
      "zero",
      "end",
      "throw",
      { returns: -1 },
      { returns: 2.5 },
      { returns: FILL_BYTES + 1 },
    ];
    for (const reply of replies) {
      source.replies.push(reply);
      const label = JSON.stringify(reply);
      if (reply === "zero") {
        assertEquals(tx.sendFrom(h, 1 << 30, source), 0, label);
      } else if (reply === "end") {
        assertEquals(tx.sendFrom(h, 1 << 30, source), -1, label);
      } else if (reply === "throw") {
        assertSourceFailure(
          () => tx.sendFrom(h, 1 << 30, source),
          Error,
          "connection reset",
        );
      } else {
        assertSourceFailure(
          () => tx.sendFrom(h, 1 << 30, source),
          RangeError,
          "a byte source returned",
        );
      }
      assertEquals(tx.filledPackets, 0, label);
      assertEquals(ring.used, used, `space given back, ${label}`);
      assertEquals(
        p.driverTxQ.freeCount,
        free,
        `no descriptor taken, ${label}`,
      );
    }
    const calls = source.calls.slice(1);
    for (const c of calls) {
      assertEquals(c, calls[0], "the same space is offered every time");
    }
    const got = deviceReceives(p);
    assertEquals(got.map((g) => g.header.len), [300], "only the first packet");
    source.pos = 300;
    const n = tx.sendFrom(h, 1 << 30, source);
    assertEquals(n, data.length - 300);
    checkCall(deviceReceives(p), n, source, 300, h, tx.filledPackets, name);
    tx.reclaim();
    assertEquals(ring.used, 0);
  });

  Deno.test(`DriverTx.sendFrom (${name}) does not run out of space over 10,000 empty and short reads`, () => {
    const { p, ring, tx, window } = txPair({ splitHeader, queueSize: 16 });
    const rng = new Prng(25);
    const data = rng.bytes(400_000);
    const source = new FakeSource(data, window);
    source.endAtEof = false;
    source.scribble = false;
    const h = header();
    const received: Uint8Array[] = [];
    for (let i = 0; i < 10_000; i++) {
      if (source.left < 10_000) source.pos = 0;
      const reply = rng.pick<Reply>(["zero", 1, "end", "throw", 1, "zero"]);
      source.replies.length = 0; // a reply the last call did not use
      source.replies.push(i % 7 === 0 ? rng.int(2, 3000) : reply);
      const from = source.pos;
      let n: number;
      try {
        n = tx.sendFrom(h, 1 << 30, source);
      } catch {
        n = 0;
      }
      if (n > 0) received.push(data.slice(from, from + n));
      // The device keeps up only now and then: the queue fills meanwhile.
      if (i % 5 === 0) {
        const got = deviceReceives(p);
        const want = concatBytes(received.splice(0));
        assertBytes(concatBytes(got.map((g) => g.payload)), want, `step ${i}`);
      }
    }
    const got = deviceReceives(p);
    assertBytes(
      concatBytes(got.map((g) => g.payload)),
      concatBytes(received.splice(0)),
    );
    tx.reclaim();
    assertEquals(ring.used, 0, "no space leaked");
    // A full pull and a full-size send() both fit again.
    source.pos = 0;
    assertEquals(tx.sendFrom(h, 1 << 30, source), FILL_BYTES);
    assertEquals(tx.filledPackets, 4);
    checkCall(deviceReceives(p), FILL_BYTES, source, 0, h, 4, name);
    assert(tx.send(h, data.subarray(0, MAX_PAYLOAD)));
    assertEquals(deviceReceives(p).map((g) => g.header.len), [MAX_PAYLOAD]);
    tx.reclaim();
    assertEquals(ring.used, 0);
    assertEquals(p.deviceDrops, []);
  });
}

Deno.test("DriverTx.sendFrom keeps no space while the device is not reading, however often the source has nothing", () => {
  const { p, ring, tx, window } = txPair({ queueSize: 8 });
  const source = new FakeSource(new Prng(26).bytes(300_000), window);
  source.scribble = false;
  const h = header();
  source.replies.push(1000);
  assertEquals(tx.sendFrom(h, 1 << 30, source), 1000);
  const used = ring.used;
  const free = p.driverTxQ.freeCount;
  for (let i = 0; i < 10_000; i++) {
    source.replies.push(i % 2 === 0 ? "zero" : "end");
    assert(tx.sendFrom(h, 1 << 30, source) <= 0);
    assertEquals(ring.used, used);
  }
  assertEquals(p.driverTxQ.freeCount, free);
  assertEquals(
    tx.sendFrom(h, 1 << 30, source),
    FILL_BYTES,
    "a full pull still fits",
  );
});

Deno.test("DriverTx.sendFrom undoes and shrinks an allocation that wrapped past the end of the ring", () => {
  const { p, ring, tx, window } = txPair({ ringBytes: 100_000, queueSize: 8 });
  const start = window.start;
  const h = header();
  const fill = (n: number) => new Uint8Array(n).fill(7);
  // a = [0, 50044), b = [50044, 90088); the device takes only a.
  assert(tx.send(h, fill(50_000)));
  assert(tx.send(h, fill(40_000)));
  p.driverTxQ.publish();
  const segs = new SegmentList();
  const a = p.deviceTxQ.pop(segs);
  p.deviceTxQ.push(a, 0);
  p.deviceTxQ.publish();
  assertEquals(tx.room(), 50_000, "the 9,912 bytes at the end are too few");
  assertEquals(ring.used, 40_044);

  const source = new FakeSource(new Prng(27).bytes(100_000), window);
  // The pull wraps to the start (skipping 9,912 bytes): the source has nothing.
  source.replies.push("zero");
  assertEquals(tx.sendFrom(h, 1 << 30, source), 0);
  assertEquals(source.calls[0], [[start + HDR_LEN, 50_000]]);
  assertEquals(ring.used, 40_044, "the wrapped allocation and its skip undone");
  // The end of the ring is where the next allocation goes again.
  assert(tx.send(h, fill(100)));
  p.driverTxQ.publish();
  segs.clear();
  const b = p.deviceTxQ.pop(segs); // b, still unread
  segs.clear();
  const c = p.deviceTxQ.pop(segs);
  assertEquals(segs.offsets[0], start + 90_088, "right after b");
  p.deviceTxQ.push(b, 0);
  p.deviceTxQ.push(c, 0);
  p.deviceTxQ.publish();
  tx.reclaim();
  assertEquals(ring.used, 0);

  // Again with a wrapping pull that reads a little: the skip stays, the rest goes.
  assert(tx.send(h, fill(50_000)));
  assert(tx.send(h, fill(40_000)));
  p.driverTxQ.publish();
  segs.clear();
  p.deviceTxQ.push(p.deviceTxQ.pop(segs), 0);
  p.deviceTxQ.publish();
  tx.reclaim();
  source.replies.push(100);
  assertEquals(tx.sendFrom(h, 1 << 30, source), 100);
  assertEquals(source.calls[1], [[start + HDR_LEN, 50_000]]);
  assertEquals(ring.used, 40_044 + 9_912 + HDR_LEN + 100);
  assertEquals(tx.room(), 50_044 - (HDR_LEN + 100) - HDR_LEN);
  const got = deviceReceives(p);
  assertEquals(got.map((g) => g.header.len), [40_000, 100]);
  assertBytes(got[1]!.payload, source.data.subarray(0, 100));
  tx.reclaim();
  assertEquals(ring.used, 0);
});

Deno.test("DriverTx.sendFrom after a short read gives back a wrapped packet's space and shrinks the one before it", () => {
  const { p, ring, tx, window } = txPair({ ringBytes: 200_000, queueSize: 8 });
  const start = window.start;
  const h = header();
  const source = new FakeSource(new Prng(31).bytes(300_000), window);
  const segs = new SegmentList();
  /** a = [0, 60044) read by the device, b = [60044, 100088) still in flight. */
  const setUp = () => {
    assert(tx.send(h, new Uint8Array(60_000)));
    assert(tx.send(h, new Uint8Array(40_000)));
    p.driverTxQ.publish();
    segs.clear();
    p.deviceTxQ.push(p.deviceTxQ.pop(segs), 0);
    p.deviceTxQ.publish();
    tx.reclaim();
    assertEquals(ring.used, 40_044);
  };
  const drain = () => {
    const got = deviceReceives(p);
    tx.reclaim();
    assertEquals(ring.used, 0);
    return got;
  };
  // The pull plans 65,536 bytes at the end and 60,000 wrapped to the start
  // (skipping the last 34,332 bytes); the source reads 1,000.
  setUp();
  source.replies.push(1000);
  assertEquals(tx.sendFrom(h, 1 << 30, source), 1000);
  assertEquals(source.calls[0], [
    [start + 100_088 + HDR_LEN, 65_536],
    [start + HDR_LEN, 60_000],
  ]);
  assertEquals(ring.used, 40_044 + HDR_LEN + 1000);
  assertEquals(
    ring.largestFree(),
    200_000 - 101_132,
    "the end is free again",
  );
  source.replies.push(10);
  assertEquals(tx.sendFrom(h, 1 << 30, source), 10);
  assertEquals(source.calls[1]![0], [start + 101_132 + HDR_LEN, 65_536]);
  assertEquals(drain().map((g) => g.header.len), [40_000, 1000, 10]);

  // Now the source reads into the wrapped packet too: it keeps its skip.
  setUp();
  source.replies.push(65_536 + 10);
  assertEquals(tx.sendFrom(h, 1 << 30, source), 65_546);
  assertEquals(
    ring.used,
    40_044 + (HDR_LEN + 65_536) + 34_332 + (HDR_LEN + 10),
  );
  assertEquals(tx.room(), 60_044 - (HDR_LEN + 10) - HDR_LEN);
  const got = drain();
  assertEquals(got.map((g) => g.header.len), [40_000, 65_536, 10]);
  assertBytes(
    concatBytes(got.slice(1).map((g) => g.payload)),
    source.data.subarray(1010, 1010 + 65_546),
  );
  assertEquals(p.deviceDrops, []);
});

Deno.test("DriverTx.sendFrom returns 0 without asking the source when no descriptor or no space is free", () => {
  // Two descriptors, split headers: one packet at a time.
  const { p, ring, tx, window } = txPair({ queueSize: 2, splitHeader: true });
  const source = new FakeSource(new Prng(28).bytes(300_000), window);
  const h = header();
  assertEquals(tx.sendFrom(h, 1 << 30, source), MAX_PAYLOAD);
  assertEquals(tx.filledPackets, 1);
  assertEquals(tx.sendFrom(h, 1 << 30, source), 0, "no descriptor free");
  assertEquals(source.calls.length, 1);
  checkCall(deviceReceives(p), MAX_PAYLOAD, source, 0, h, 1, "first");
  assertEquals(tx.sendFrom(h, 1 << 30, source), MAX_PAYLOAD);
  deviceReceives(p);
  tx.reclaim();
  assertEquals(ring.used, 0);

  // A ring just big enough for one header and 10 bytes.
  const small = txPair({ ringBytes: HDR_LEN + 10, queueSize: 4 });
  const s2 = new FakeSource(new Prng(29).bytes(100), small.window);
  assertEquals(small.tx.sendFrom(h, 1 << 30, s2), 10);
  assertEquals(small.tx.sendFrom(h, 1 << 30, s2), 0, "no space free");
  assertEquals(s2.calls.length, 1);
  deviceReceives(small.p);
  assertEquals(small.tx.sendFrom(h, 1 << 30, s2), 10, "space came back");
});

Deno.test("DriverTx.sendFrom sends no more than max", () => {
  const { p, ring, tx, window } = txPair();
  const source = new FakeSource(new Prng(30).bytes(200_000), window);
  const h = header();
  assertEquals(tx.sendFrom(h, 0, source), 0);
  assertEquals(source.calls.length, 0);
  let at = 0;
  for (const max of [1, 44, 100, 65_536, 65_537]) {
    const n = tx.sendFrom(h, max, source);
    assertEquals(n, max);
    assertEquals(
      source.calls[source.calls.length - 1]!.map(([, l]) => l),
      max > MAX_PAYLOAD ? [MAX_PAYLOAD, max - MAX_PAYLOAD] : [max],
    );
    checkCall(
      deviceReceives(p),
      n,
      source,
      at,
      h,
      tx.filledPackets,
      `max ${max}`,
    );
    at += n;
  }
  tx.reclaim();
  assertEquals(ring.used, 0);
});

// ---------------------------------------------------------------------------
// Randomized: sendFrom interleaved with put()/send()

const BASE_SEED = Number(Deno.env.get("IVSOCK_SEED") ?? 0x5e7df);

function randomReply(rng: Prng): Reply {
  const r = rng.int(0, 99);
  if (r < 35) return "all";
  if (r < 65) return rng.int(1, rng.pick([10, 300, 5000, 70_000]));
  if (r < 75) return "zero";
  if (r < 82) return "throw";
  if (r < 88) return { returns: rng.pick([-1, 0.5, 1e9]) };
  return 0; // a cap of 0: the source has nothing right now
}

Deno.test("DeviceRx.sendFrom interleaved with put() carries the stream byte for byte (seeded)", () => {
  for (let c = 0; c < 24; c++) {
    const seed = (BASE_SEED + c) >>> 0;
    const rng = new Prng(seed);
    const mergeable = rng.chance(0.5);
    const hdrLen = mergeable ? MRG_HDR_LEN : HDR_LEN;
    const bufferSize = c < 4 ? [4096, 65536][c % 2]! : Math.max(
      hdrLen + 1,
      Math.round(Math.exp(rng.int(0, 1000) / 1000 * Math.log(65536 / 46)) * 46),
    );
    const queueSize = rng.pick([1, 2, 16, 64, 256]);
    const options: QueuePairOptions = { queueSize, mergeable, bufferSize };
    if (rng.chance(0.3) && bufferSize > 64 && queueSize >= 16) {
      options.descriptorBytes = rng.int(Math.ceil(bufferSize / 8), bufferSize);
    }
    const label = `seed ${seed}: ${JSON.stringify(options)}`;
    const p = makeQueuePair(options);
    const window = {
      start: p.bufferStart,
      end: p.bufferStart + p.driverRx.slots * bufferSize,
    };
    const perCall = Math.min(FILL_BYTES, p.driverRx.slots * bufferSize);
    const data = rng.bytes(rng.int(0, Math.min(300_000, 3 * perCall)));
    const source = new FakeSource(data, window);
    const h = header();
    const received: Uint8Array[] = [];
    let idle = 0;
    let ended = false;
    while (!ended) {
      assert(idle < 20, `no progress, ${label}`);
      const before = source.pos;
      let moved = 0;
      if (rng.chance(0.25) && source.left > 0) {
        const room = p.deviceRx.room();
        if (room > 0) {
          const chunk = source.take(rng.int(1, Math.min(room, source.left)));
          assert(p.deviceRx.put(h, chunk), label);
          moved = chunk.length;
        }
      } else {
        const reply = randomReply(rng);
        source.replies.push(reply);
        const max = rng.chance(0.2) ? rng.int(1, 2 * bufferSize) : FILL_BYTES;
        const calls = source.calls.length;
        let n: number;
        try {
          n = p.deviceRx.sendFrom(h, max, source);
        } catch (e) {
          assert(
            reply === "throw" || typeof reply === "object",
            `${e}, ${label}`,
          );
          n = 0;
        }
        if (source.calls.length === calls) source.replies.pop(); // not asked
        if (n === -1) ended = true;
        else {
          assert(n >= 0 && n <= max, label);
          moved = n;
        }
        // What the source read beyond n is not sent: it is read again.
        source.pos = before + Math.max(n, 0);
      }
      idle = moved > 0 ? 0 : idle + 1;
      if (moved === 0 || rng.chance(0.3)) {
        for (const g of driverReceives(p)) {
          sameButLen(g.header, h, label);
          received.push(g.payload);
        }
      }
    }
    for (const g of driverReceives(p)) received.push(g.payload);
    assertEquals(source.left, 0, label);
    assertBytes(concatBytes(received), data, label);
    assertEquals([p.deviceDrops, p.driverErrors], [[], []], label);
  }
});

Deno.test("DriverTx.sendFrom interleaved with send() carries the stream byte for byte and leaks no space (seeded)", () => {
  for (let c = 0; c < 24; c++) {
    const seed = (BASE_SEED + 100 + c) >>> 0;
    const rng = new Prng(seed);
    const queueSize = rng.pick([1, 2, 16, 64, 256]);
    const splitHeader = rng.chance(0.5);
    const ringBytes = rng.pick([HDR_LEN + 1, 200, 5000, 70_000, 262_400]);
    const label =
      `seed ${seed}: queue ${queueSize}, split ${splitHeader}, ring ${ringBytes}`;
    const { p, ring, tx, window } = txPair({
      queueSize,
      splitHeader,
      ringBytes,
    });
    const data = rng.bytes(rng.int(0, Math.min(300_000, 40 * ringBytes)));
    const source = new FakeSource(data, window);
    const h = header();
    const received: Uint8Array[] = [];
    let idle = 0;
    let ended = false;
    while (!ended) {
      assert(idle < 20, `no progress, ${label}`);
      const before = source.pos;
      let moved = 0;
      if (rng.chance(0.25) && source.left > 0) {
        const room = tx.room();
        if (room > 0) {
          const chunk = source.take(rng.int(1, Math.min(room, source.left)));
          assert(tx.send(h, chunk), label);
          moved = chunk.length;
        }
      } else {
        const reply = randomReply(rng);
        source.replies.push(reply);
        const max = rng.chance(0.2) ? rng.int(1, 100_000) : FILL_BYTES;
        const calls = source.calls.length;
        const usedBefore = ring.used;
        let n: number;
        try {
          n = tx.sendFrom(h, max, source);
        } catch (e) {
          assert(
            reply === "throw" || typeof reply === "object",
            `${e}, ${label}`,
          );
          n = 0;
        }
        if (source.calls.length === calls) source.replies.pop();
        if (n === -1) ended = true;
        else {
          assert(n >= 0 && n <= max, label);
          moved = n;
        }
        if (n <= 0) {
          // Nothing sent: the space taken for the pull went back. (The
          // reclaim at the start can only lower `used`.)
          assert(ring.used <= usedBefore, `space kept, ${label}`);
        }
        source.pos = before + Math.max(n, 0);
      }
      idle = moved > 0 ? 0 : idle + 1;
      if (moved === 0 || rng.chance(0.3)) {
        for (const g of deviceReceives(p)) {
          sameButLen(g.header, h, label);
          received.push(g.payload);
        }
      }
    }
    for (const g of deviceReceives(p)) received.push(g.payload);
    assertEquals(source.left, 0, label);
    assertBytes(concatBytes(received), data, label);
    tx.reclaim();
    assertEquals(ring.used, 0, `space leaked, ${label}`);
    assertEquals(p.deviceDrops, [], label);
  }
});
