/**
 * Every rule the device enforces on a descriptor chain, one test each. A
 * rejected chain is returned with used length 0, reported with a reason, and
 * the queue keeps working.
 */
import { assertEquals, assertMatch } from "../../../dev_deps.ts";
import { DESC_F, type RawQueue, rawQueue } from "../../_support/raw_ring.ts";

/** Pops once and asserts the chain was dropped for `reason`. */
function assertDropped(q: RawQueue, head: number, reason: RegExp): void {
  q.segments.clear();
  assertEquals(q.device.pop(q.segments), -1, "no valid chain");
  assertEquals(q.drops.length, 1, `drops: ${q.drops.join("; ")}`);
  assertMatch(q.drops[0]!, reason);
  assertEquals(q.device.broken, null, "a bad chain does not break the queue");
  const n = q.driver.usedIdx() - 1;
  assertEquals(q.driver.used(n), { id: head, len: 0 }, "returned unused");
  assertEquals(q.segments.count, 0, "no segments leak out of a bad chain");
}

Deno.test("device accepts a valid chain and reports its buffers", () => {
  const q = rawQueue(8);
  const b = q.bufferStart;
  q.driver.desc(3, { addr: b, len: 44, flags: DESC_F.NEXT, next: 5 });
  q.driver.desc(5, { addr: b + 100, len: 200 });
  q.driver.offer(3);
  assertEquals(q.device.pop(q.segments), 3);
  assertEquals(q.segments.count, 2);
  assertEquals(q.segments.bytes, 244);
  assertEquals([q.segments.offsets[1], q.segments.lengths[1]], [b + 100, 200]);
});

Deno.test("device rejects a descriptor chain that loops", () => {
  const q = rawQueue(8);
  const b = q.bufferStart;
  q.driver.desc(0, { addr: b, len: 16, flags: DESC_F.NEXT, next: 1 });
  q.driver.desc(1, { addr: b, len: 16, flags: DESC_F.NEXT, next: 2 });
  q.driver.desc(2, { addr: b, len: 16, flags: DESC_F.NEXT, next: 0 });
  q.driver.offer(0);
  assertDropped(q, 0, /longer than the queue size 8 or loops/);
});

Deno.test("device rejects a descriptor that chains to itself", () => {
  const q = rawQueue(4);
  q.driver.desc(2, {
    addr: q.bufferStart,
    len: 1,
    flags: DESC_F.NEXT,
    next: 2,
  });
  q.driver.offer(2);
  assertDropped(q, 2, /loops/);
});

Deno.test("device rejects a next index outside the descriptor table", () => {
  const q = rawQueue(4);
  q.driver.desc(0, {
    addr: q.bufferStart,
    len: 8,
    flags: DESC_F.NEXT,
    next: 4,
  });
  q.driver.offer(0);
  assertDropped(q, 0, /next 4, outside a table of 4/);
});

Deno.test("device rejects a buffer that ends past the region", () => {
  const q = rawQueue(4);
  q.driver.desc(0, { addr: q.region.size - 8, len: 9 });
  q.driver.offer(0);
  assertDropped(q, 0, /outside the buffer area/);
});

Deno.test("device rejects a buffer whose address plus length wraps 32 bits", () => {
  const q = rawQueue(4);
  q.driver.desc(0, { addr: 0xffff_fff0, len: 0x20 });
  q.driver.offer(0);
  assertDropped(q, 0, /outside the buffer area/);
});

Deno.test("device rejects a buffer address at or above 2^32", () => {
  const q = rawQueue(4);
  q.driver.desc(0, { addr: 0x1_0000_0000n + BigInt(q.bufferStart), len: 8 });
  q.driver.offer(0);
  assertDropped(q, 0, />= 2\^32/);
});

Deno.test("device rejects a buffer that points into the rings instead of the buffer area", () => {
  const q = rawQueue(4);
  q.driver.desc(0, { addr: 0, len: 16 }); // the descriptor table itself
  q.driver.offer(0);
  assertDropped(q, 0, /outside the buffer area/);
});

Deno.test("device rejects a readable descriptor after a writable one", () => {
  const q = rawQueue(4, { direction: "device-writes", name: "rx" });
  const b = q.bufferStart;
  q.driver.desc(0, {
    addr: b,
    len: 8,
    flags: DESC_F.WRITE | DESC_F.NEXT,
    next: 1,
  });
  q.driver.desc(1, { addr: b + 8, len: 8 });
  q.driver.offer(0);
  assertDropped(q, 0, /readable after a writable/);
});

Deno.test("device rejects a writable descriptor in the tx queue", () => {
  const q = rawQueue(4);
  const b = q.bufferStart;
  q.driver.desc(0, { addr: b, len: 44, flags: DESC_F.NEXT, next: 1 });
  q.driver.desc(1, { addr: b + 44, len: 8, flags: DESC_F.WRITE });
  q.driver.offer(0);
  assertDropped(q, 0, /device-writable in a queue the device only reads/);
});

Deno.test("device rejects a readable descriptor in the rx queue", () => {
  const q = rawQueue(4, { direction: "device-writes", name: "rx" });
  q.driver.desc(0, { addr: q.bufferStart, len: 4096 });
  q.driver.offer(0);
  assertDropped(q, 0, /device-readable in a queue the device only writes/);
});

Deno.test("device rejects a chain of 2^32 bytes or more", () => {
  const size = 4096;
  const q = rawQueue(size, { regionSize: 1 << 22 });
  // 4096 descriptors of 1 MiB each, all over the same buffer: 4 GiB in all.
  for (let i = 0; i < size; i++) {
    q.driver.desc(i, {
      addr: q.bufferStart,
      len: 1 << 20,
      flags: i < size - 1 ? DESC_F.NEXT : 0,
      next: i + 1,
    });
  }
  q.driver.offer(0);
  assertDropped(q, 0, /2\^32 bytes or longer/);
});

Deno.test("device keeps serving after dropping a bad chain", () => {
  const q = rawQueue(4);
  q.driver.desc(0, { addr: 0, len: 8 }); // bad
  q.driver.desc(1, { addr: q.bufferStart, len: 8 }); // good
  q.driver.offer(0, 1);
  assertEquals(q.device.pop(q.segments), 1);
  assertEquals(q.drops.length, 1);
  assertEquals(q.driver.used(0), { id: 0, len: 0 });
});

Deno.test("device skips zero-length descriptors without storing them", () => {
  const q = rawQueue(4);
  const b = q.bufferStart;
  q.driver.desc(0, { addr: b, len: 0, flags: DESC_F.NEXT, next: 1 });
  q.driver.desc(1, { addr: b, len: 12 });
  q.driver.offer(0);
  assertEquals(q.device.pop(q.segments), 0);
  assertEquals(q.segments.count, 1);
  assertEquals(q.segments.bytes, 12);
});

// Indirect descriptors (virtio 1.3, 2.7.5.3).

Deno.test("device rejects an indirect descriptor when the feature was not negotiated", () => {
  const q = rawQueue(4);
  q.driver.desc(0, { addr: q.bufferStart, len: 32, flags: DESC_F.INDIRECT });
  q.driver.offer(0);
  assertDropped(q, 0, /indirect descriptors were not negotiated/);
});

Deno.test("device follows a chain that ends in an indirect table", () => {
  const q = rawQueue(8, { indirect: true });
  const b = q.bufferStart;
  const table = b + 4096;
  q.driver.desc(0, { addr: b, len: 44, flags: DESC_F.NEXT, next: 1 });
  // WRITE on the descriptor that points at the table is ignored (2.7.5.3.2).
  q.driver.desc(1, {
    addr: table,
    len: 32,
    flags: DESC_F.INDIRECT | DESC_F.WRITE,
  });
  writeIndirect(q, table, 0, {
    addr: b + 100,
    len: 10,
    flags: DESC_F.NEXT,
    next: 1,
  });
  writeIndirect(q, table, 1, { addr: b + 200, len: 20 });
  q.driver.offer(0);
  assertEquals(q.device.pop(q.segments), 0);
  assertEquals(q.segments.count, 3);
  assertEquals(q.segments.bytes, 74);
  assertEquals(q.drops, []);
});

Deno.test("device rejects nested indirect tables", () => {
  const q = rawQueue(8, { indirect: true });
  const table = q.bufferStart;
  q.driver.desc(0, { addr: table, len: 16, flags: DESC_F.INDIRECT });
  writeIndirect(q, table, 0, {
    addr: table + 64,
    len: 16,
    flags: DESC_F.INDIRECT,
  });
  q.driver.offer(0);
  assertDropped(q, 0, /nesting is forbidden/);
});

Deno.test("device rejects INDIRECT together with NEXT", () => {
  const q = rawQueue(8, { indirect: true });
  q.driver.desc(0, {
    addr: q.bufferStart,
    len: 16,
    flags: DESC_F.INDIRECT | DESC_F.NEXT,
    next: 1,
  });
  q.driver.offer(0);
  assertDropped(q, 0, /both INDIRECT and NEXT/);
});

Deno.test("device rejects an indirect table whose length is not a multiple of 16", () => {
  const q = rawQueue(8, { indirect: true });
  q.driver.desc(0, { addr: q.bufferStart, len: 24, flags: DESC_F.INDIRECT });
  q.driver.offer(0);
  assertDropped(q, 0, /not a non-zero multiple of 16/);
});

Deno.test("device rejects an empty indirect table", () => {
  const q = rawQueue(8, { indirect: true });
  q.driver.desc(0, { addr: q.bufferStart, len: 0, flags: DESC_F.INDIRECT });
  q.driver.offer(0);
  assertDropped(q, 0, /not a non-zero multiple of 16/);
});

Deno.test("device rejects an indirect table outside the buffer area", () => {
  const q = rawQueue(8, { indirect: true });
  q.driver.desc(0, {
    addr: q.region.size - 16,
    len: 32,
    flags: DESC_F.INDIRECT,
  });
  q.driver.offer(0);
  assertDropped(q, 0, /indirect table at .* is outside the buffer area/);
});

Deno.test("device rejects an indirect table longer than the queue size", () => {
  const q = rawQueue(4, { indirect: true });
  q.driver.desc(0, {
    addr: q.bufferStart,
    len: 16 * 5,
    flags: DESC_F.INDIRECT,
  });
  q.driver.offer(0);
  assertDropped(q, 0, /5 descriptors exceeds the queue size 4/);
});

Deno.test("device rejects a loop inside an indirect table", () => {
  const q = rawQueue(8, { indirect: true });
  const table = q.bufferStart;
  q.driver.desc(0, { addr: table, len: 32, flags: DESC_F.INDIRECT });
  writeIndirect(q, table, 0, {
    addr: table + 64,
    len: 4,
    flags: DESC_F.NEXT,
    next: 1,
  });
  writeIndirect(q, table, 1, {
    addr: table + 64,
    len: 4,
    flags: DESC_F.NEXT,
    next: 0,
  });
  q.driver.offer(0);
  assertDropped(q, 0, /loops/);
});

Deno.test("device rejects a next index outside the indirect table", () => {
  const q = rawQueue(8, { indirect: true });
  const table = q.bufferStart;
  q.driver.desc(0, { addr: table, len: 32, flags: DESC_F.INDIRECT });
  writeIndirect(q, table, 0, {
    addr: table + 64,
    len: 4,
    flags: DESC_F.NEXT,
    next: 2,
  });
  q.driver.offer(0);
  assertDropped(q, 0, /next 2, outside a table of 2/);
});

Deno.test("device accepts an indirect table of exactly the queue size", () => {
  const q = rawQueue(4, { indirect: true });
  const table = q.bufferStart;
  q.driver.desc(0, { addr: table, len: 64, flags: DESC_F.INDIRECT });
  for (let i = 0; i < 4; i++) {
    writeIndirect(q, table, i, {
      addr: table + 128,
      len: 4,
      flags: i < 3 ? DESC_F.NEXT : 0,
      next: i + 1,
    });
  }
  q.driver.offer(0);
  assertEquals(q.device.pop(q.segments), 0);
  assertEquals(q.segments.count, 4);
});

Deno.test("device counts indirect entries towards the chain length limit", () => {
  const q = rawQueue(4, { indirect: true });
  const b = q.bufferStart;
  const table = b + 1024;
  q.driver.desc(0, { addr: b, len: 4, flags: DESC_F.NEXT, next: 1 });
  q.driver.desc(1, { addr: table, len: 64, flags: DESC_F.INDIRECT });
  for (let i = 0; i < 4; i++) {
    writeIndirect(q, table, i, {
      addr: b,
      len: 4,
      flags: i < 3 ? DESC_F.NEXT : 0,
      next: i + 1,
    });
  }
  q.driver.offer(0);
  assertDropped(q, 0, /longer than the queue size 4/);
});

function writeIndirect(
  q: RawQueue,
  table: number,
  index: number,
  d: { addr: number; len: number; flags?: number; next?: number },
): void {
  const at = table + index * 16;
  q.region.setOffset64(at, d.addr);
  q.region.setU32(at + 8, d.len);
  q.region.setU16(at + 12, d.flags ?? 0);
  q.region.setU16(at + 14, d.next ?? 0);
}
