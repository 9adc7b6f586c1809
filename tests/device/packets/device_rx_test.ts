/**
 * Device-to-driver packets, device side: the mergeable-buffer rules of the
 * seed (num_buffers, all buffers but the last full, all returned together,
 * never a partial packet) and the single-buffer rules without the feature.
 */
import {
  assert,
  assertEquals,
  assertMatch,
  assertThrows,
} from "../../../dev_deps.ts";
import { DESC_F, type RawQueue, rawQueue } from "../../_support/raw_ring.ts";
import { DeviceRx } from "../../../device/packets/device_rx.ts";
import {
  decodeHeader,
  HDR_LEN,
  MAX_PAYLOAD,
  MRG_HDR_LEN,
  newHeader,
  OP,
} from "../../../device/packets/header.ts";
import { USED_IDX } from "../../../device/virtqueue/split_ring.ts";

function rxQueue(size: number, mergeable: boolean) {
  const q = rawQueue(size, {
    direction: "device-writes",
    name: "rx",
    regionSize: 1 << 21,
  });
  const rx = new DeviceRx(q.device, {
    mergeable,
    onDrop: (r) => q.drops.push(r),
  });
  return { q, rx };
}

/** Posts buffers of the given sizes as one-descriptor chains; returns their offsets. */
function post(
  q: RawQueue,
  sizes: number[],
  firstHead = 0,
  at = q.bufferStart,
): number[] {
  const offsets: number[] = [];
  sizes.forEach((len, i) => {
    q.driver.desc(firstHead + i, { addr: at, len, flags: DESC_F.WRITE });
    offsets.push(at);
    at += len;
  });
  q.driver.offer(...sizes.map((_, i) => firstHead + i));
  return offsets;
}

function pattern(n: number): Uint8Array {
  return Uint8Array.from({ length: n }, (_, i) => (i * 7 + 1) & 0xff);
}

function rwHeader() {
  const h = newHeader();
  Object.assign(h, {
    srcCid: 2,
    dstCid: 3,
    srcPort: 80,
    dstPort: 1024,
    type: 1,
    op: OP.RW,
  });
  return h;
}

/** Records every value the device stores into the used index. */
function watchUsedIdx(q: RawQueue): number[] {
  const seen: number[] = [];
  const usedIdx = q.device.layout.used + USED_IDX;
  const store16 = q.region.store16.bind(q.region);
  q.region.store16 = (offset: number, value: number) => {
    if (offset === usedIdx) seen.push(value);
    store16(offset, value);
  };
  return seen;
}

Deno.test("device spreads a packet over buffers, filling every one but the last, and sets num_buffers", () => {
  const { q, rx } = rxQueue(8, true);
  const offsets = post(q, [100, 100, 100, 100, 100]);
  const payload = pattern(300);
  assert(rx.put(rwHeader(), payload));
  // 46 + 300 = 346 bytes: three full buffers and 46 bytes of the fourth.
  assertEquals([0, 1, 2, 3].map((n) => q.driver.used(n)), [
    { id: 0, len: 100 },
    { id: 1, len: 100 },
    { id: 2, len: 100 },
    { id: 3, len: 46 },
  ]);
  const first = q.region.span(offsets[0]!, 100);
  const view = new DataView(first.buffer, first.byteOffset, 100);
  const h = decodeHeader(view, 0, newHeader());
  assertEquals(h.len, 300);
  assertEquals(view.getUint16(44, true), 4, "num_buffers");
  // The payload continues straight across buffer boundaries.
  const got = new Uint8Array(300);
  got.set(q.region.span(offsets[0]! + MRG_HDR_LEN, 54), 0);
  got.set(q.region.span(offsets[1]!, 100), 54);
  got.set(q.region.span(offsets[2]!, 100), 154);
  got.set(q.region.span(offsets[3]!, 46), 254);
  assertEquals(got, payload);
  assertEquals(rx.held, 1, "the fifth buffer waits for the next packet");
});

Deno.test("device returns all buffers of a merged packet in one publish", () => {
  const { q, rx } = rxQueue(16, true);
  post(q, Array(10).fill(64));
  const published = watchUsedIdx(q);
  assert(rx.put(rwHeader(), pattern(64 * 10 - MRG_HDR_LEN)));
  assertEquals(published, [10], "the used index moves once, from 0 to 10");
});

Deno.test("device waits for more buffers rather than writing part of a packet", () => {
  const { q, rx } = rxQueue(8, true);
  const offsets = post(q, [100, 100]);
  const before = q.region.span(offsets[0]!, 200).slice();
  assertEquals(rx.room(), 200 - MRG_HDR_LEN);
  assertEquals(rx.put(rwHeader(), pattern(300)), false);
  assertEquals(q.driver.usedIdx(), 0, "nothing returned");
  assertEquals(q.region.span(offsets[0]!, 200), before, "nothing written");
  post(q, [100, 100], 2, offsets[1]! + 100);
  assertEquals(rx.put(rwHeader(), pattern(300)), true);
  assertEquals(q.driver.usedIdx(), 4);
});

Deno.test("device caps a merged packet at 64 KiB of payload however many buffers are posted", () => {
  const { q, rx } = rxQueue(64, true);
  post(q, Array(40).fill(4096));
  rx.room();
  assertEquals(
    rx.held,
    17,
    "only as many buffers as a full packet needs are held",
  );
  assertThrows(() => rx.put(rwHeader(), pattern(MAX_PAYLOAD + 1)), RangeError);
  assert(rx.put(rwHeader(), pattern(MAX_PAYLOAD)), "a full 64 KiB fits");
  assertEquals(q.driver.usedIdx(), 17);
});

Deno.test("device ends a merged packet where a buffer ends: with 64 KiB buffers a full packet takes one, not two", () => {
  const { q, rx } = rxQueue(8, true);
  const offsets = post(q, [65536, 65536, 65536]);
  // 64 KiB of payload behind the 46-byte header would need a second buffer
  // for its last 46 bytes.
  assertEquals(rx.room(), 65536 - MRG_HDR_LEN);
  assert(rx.put(rwHeader(), pattern(rx.room())));
  assertEquals(q.driver.usedIdx(), 1);
  assertEquals(q.driver.used(0), { id: 0, len: 65536 });
  const first = q.region.span(offsets[0]!, MRG_HDR_LEN);
  const view = new DataView(first.buffer, first.byteOffset, MRG_HDR_LEN);
  assertEquals(view.getUint16(44, true), 1, "num_buffers");
  assertEquals(rx.room(), 65536 - MRG_HDR_LEN, "the next packet likewise");
});

Deno.test("device ends a merged packet where a buffer ends: with 4 KiB buffers a full packet takes sixteen, not seventeen", () => {
  const { q, rx } = rxQueue(64, true);
  post(q, Array(40).fill(4096));
  assertEquals(rx.room(), 16 * 4096 - MRG_HDR_LEN);
  assert(rx.put(rwHeader(), pattern(rx.room())));
  assertEquals(q.driver.usedIdx(), 16);
  assertEquals(q.driver.used(15), { id: 15, len: 4096 }, "the last one full");
});

Deno.test("device does not halve a merged packet to end it on a buffer boundary", () => {
  const { q, rx } = rxQueue(8, true);
  post(q, [30 * 1024, 100 * 1024]);
  // Ending in the first buffer would leave 30,674 bytes of a possible 64 KiB.
  assertEquals(rx.room(), MAX_PAYLOAD);
  assert(rx.put(rwHeader(), pattern(MAX_PAYLOAD)));
  assertEquals(q.driver.usedIdx(), 2);
});

Deno.test("device without mergeable buffers puts one packet per buffer and caps the payload by it", () => {
  const { q, rx } = rxQueue(8, false);
  const [at] = post(q, [100]);
  assertEquals(rx.room(), 100 - HDR_LEN);
  assertEquals(
    rx.put(rwHeader(), pattern(57)),
    false,
    "57 bytes do not fit after a 44-byte header",
  );
  assert(rx.put(rwHeader(), pattern(56)));
  assertEquals(q.driver.used(0), { id: 0, len: 100 });
  const first = q.region.span(at!, 100);
  assertEquals(
    decodeHeader(new DataView(first.buffer, first.byteOffset), 0, newHeader())
      .len,
    56,
  );
  assertEquals(
    first.subarray(HDR_LEN),
    pattern(56),
    "the payload follows the 44-byte header",
  );
  assertEquals(rx.room(), -1, "no buffer left");
});

Deno.test("device drops a receive buffer smaller than the mergeable header", () => {
  const { q, rx } = rxQueue(8, true);
  post(q, [45, 100]);
  assertEquals(rx.room(), 100 - MRG_HDR_LEN);
  assertEquals(q.driver.used(0), { id: 0, len: 0 });
  assertMatch(
    q.drops[0]!,
    /receive buffer of 45 bytes, smaller than the 46-byte header/,
  );
});

Deno.test("device drops a receive buffer smaller than the header without mergeable buffers", () => {
  const { q, rx } = rxQueue(8, false);
  post(q, [43]);
  assertEquals(rx.room(), -1);
  assertMatch(q.drops[0]!, /43 bytes, smaller than the 44-byte header/);
});

Deno.test("device scatters a packet across a buffer made of several descriptors", () => {
  const { q, rx } = rxQueue(8, true);
  const b = q.bufferStart;
  // One buffer of three descriptors: 10 + 50 + 40 bytes, scattered in memory.
  q.driver.desc(0, {
    addr: b + 1000,
    len: 10,
    flags: DESC_F.WRITE | DESC_F.NEXT,
    next: 1,
  });
  q.driver.desc(1, {
    addr: b + 2000,
    len: 50,
    flags: DESC_F.WRITE | DESC_F.NEXT,
    next: 2,
  });
  q.driver.desc(2, { addr: b + 3000, len: 40, flags: DESC_F.WRITE });
  q.driver.offer(0);
  const payload = pattern(54);
  assert(rx.put(rwHeader(), payload));
  assertEquals(q.driver.used(0), { id: 0, len: 100 });
  const wire = new Uint8Array(100);
  wire.set(q.region.span(b + 1000, 10), 0);
  wire.set(q.region.span(b + 2000, 50), 10);
  wire.set(q.region.span(b + 3000, 40), 60);
  assertEquals(wire.subarray(MRG_HDR_LEN), payload);
  assertEquals(new DataView(wire.buffer).getUint16(44, true), 1);
});

Deno.test("device sends a zero-length control packet in a single buffer", () => {
  const { q, rx } = rxQueue(4, true);
  post(q, [46, 46]);
  const h = rwHeader();
  h.op = OP.CREDIT_UPDATE;
  assert(rx.put(h, new Uint8Array(0)));
  assertEquals(q.driver.used(0), { id: 0, len: 46 });
  assertEquals(rx.held, 1);
});
