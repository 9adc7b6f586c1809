/**
 * Driver-to-device packets, device side: what the device accepts from the
 * tx queue and what it drops.
 */
import { assert, assertEquals, assertMatch } from "../../../dev_deps.ts";
import { DESC_F, type RawQueue, rawQueue } from "../../_support/raw_ring.ts";
import { DeviceTx } from "../../../device/packets/device_tx.ts";
import {
  encodeHeader,
  HDR_LEN,
  MAX_PAYLOAD,
  newHeader,
  OP,
} from "../../../device/packets/header.ts";

function txQueue() {
  const q = rawQueue(8, { regionSize: 1 << 20 });
  const tx = new DeviceTx(q.device, (r) => q.drops.push(r));
  return { q, tx };
}

/** Writes a header claiming `len` payload bytes at `at`. */
function header(q: RawQueue, at: number, len: number): void {
  const h = newHeader();
  Object.assign(h, {
    srcCid: 3,
    dstCid: 2,
    srcPort: 1024,
    dstPort: 80,
    type: 1,
    op: OP.RW,
    len,
  });
  const bytes = q.region.span(at, HDR_LEN);
  encodeHeader(new DataView(bytes.buffer, bytes.byteOffset, HDR_LEN), 0, h);
}

Deno.test("device reads a packet whose header and payload sit in one buffer without copying", () => {
  const { q, tx } = txQueue();
  const b = q.bufferStart;
  header(q, b, 5);
  q.region.span(b + HDR_LEN, 5).set([1, 2, 3, 4, 5]);
  q.driver.desc(0, { addr: b, len: HDR_LEN + 5 });
  q.driver.offer(0);
  assert(tx.next());
  assertEquals(tx.packet.header.len, 5);
  assertEquals(tx.packet.count, 1);
  const chunk = tx.packet.chunks[0]!;
  assertEquals([...chunk], [1, 2, 3, 4, 5]);
  chunk[0] = 9; // a view into the region, not a copy
  assertEquals(q.region.getU8(b + HDR_LEN), 9);
  assertEquals(tx.next(), false);
  tx.flush();
  assertEquals(
    q.driver.used(0),
    { id: 0, len: 0 },
    "tx buffers come back with length 0",
  );
});

Deno.test("device gathers a header and payload spread over several descriptors", () => {
  const { q, tx } = txQueue();
  const b = q.bufferStart;
  const staging = b + 8192;
  header(q, staging, 10);
  // Header split 20 + 24 across two descriptors, payload split 3 + 7.
  q.region.write(b + 100, q.region.span(staging, 20));
  q.region.write(b + 300, q.region.span(staging + 20, 24));
  q.region.span(b + 500, 3).set([1, 2, 3]);
  q.region.span(b + 700, 7).set([4, 5, 6, 7, 8, 9, 10]);
  q.driver.desc(0, { addr: b + 100, len: 20, flags: DESC_F.NEXT, next: 1 });
  q.driver.desc(1, { addr: b + 300, len: 24, flags: DESC_F.NEXT, next: 2 });
  q.driver.desc(2, { addr: b + 500, len: 3, flags: DESC_F.NEXT, next: 3 });
  q.driver.desc(3, { addr: b + 700, len: 7 });
  q.driver.offer(0);
  assert(tx.next());
  assertEquals(tx.packet.header.op, OP.RW);
  assertEquals([...tx.packet.payloadCopy()], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
});

Deno.test("device drops a tx packet shorter than the header", () => {
  const { q, tx } = txQueue();
  q.driver.desc(0, { addr: q.bufferStart, len: HDR_LEN - 1 });
  q.driver.offer(0);
  assertEquals(tx.next(), false);
  tx.flush();
  assertMatch(q.drops[0]!, /43 bytes is shorter than the 44-byte header/);
  assertEquals(q.driver.used(0), { id: 0, len: 0 });
});

Deno.test("device drops a tx packet whose payload length exceeds 64 KiB", () => {
  const { q, tx } = txQueue();
  header(q, q.bufferStart, MAX_PAYLOAD + 1);
  q.driver.desc(0, { addr: q.bufferStart, len: HDR_LEN + MAX_PAYLOAD + 1 });
  q.driver.offer(0);
  assertEquals(tx.next(), false);
  assertMatch(q.drops[0]!, /payload length 65537 exceeds 65536/);
});

Deno.test("device drops a tx packet that claims more payload than its buffers hold", () => {
  const { q, tx } = txQueue();
  header(q, q.bufferStart, 100);
  q.driver.desc(0, { addr: q.bufferStart, len: HDR_LEN + 99 });
  q.driver.offer(0);
  assertEquals(tx.next(), false);
  assertMatch(q.drops[0]!, /claims 100 payload bytes but its buffers hold 99/);
});

Deno.test("device keeps reading tx packets after dropping a bad one", () => {
  const { q, tx } = txQueue();
  const b = q.bufferStart;
  q.driver.desc(0, { addr: b, len: 10 });
  header(q, b + 100, 0);
  q.driver.desc(1, { addr: b + 100, len: HDR_LEN });
  q.driver.offer(0, 1);
  assert(tx.next());
  assertEquals(tx.packet.header.len, 0);
  assertEquals(tx.packet.count, 0);
  tx.flush();
  assertEquals(q.driver.usedIdx(), 2);
});
