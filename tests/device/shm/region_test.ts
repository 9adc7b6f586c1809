import { assert, assertEquals, assertThrows } from "../../../dev_deps.ts";
import {
  checkRegionSize,
  MAX_REGION_SIZE,
  Region,
  RegionAccessError,
} from "../../../device/shm/region.ts";

Deno.test("Region.span() returns a view that shares memory with the region", () => {
  const r = Region.alloc(4096);
  r.span(100, 4).set([1, 2, 3, 4]);
  assertEquals(r.getU32(100), 0x04030201);
});

Deno.test("Region.span() rejects a range that ends past the region", () => {
  const r = Region.alloc(4096);
  assertThrows(() => r.span(4000, 97), RegionAccessError);
  assertEquals(r.span(4000, 96).length, 96);
});

Deno.test("Region rejects an offset plus length that would wrap a 32-bit sum", () => {
  const r = Region.alloc(4096);
  // 0xffffffff + 2 wraps to 1 in u32 arithmetic; in ours it is out of range.
  assertThrows(() => r.span(0xffffffff, 2), RegionAccessError);
  assertThrows(() => r.getU32(2 ** 32 - 2), RegionAccessError);
  assert(!r.contains(0xffffffff, 2));
});

Deno.test("Region rejects negative, fractional and NaN offsets and lengths", () => {
  const r = Region.alloc(4096);
  for (
    const [o, l] of [[-1, 4], [0, -1], [1.5, 2], [0, 2.5], [NaN, 1], [0, NaN]]
  ) {
    assertThrows(
      () => r.span(o!, l!),
      RegionAccessError,
      undefined,
      `span(${o}, ${l})`,
    );
  }
});

Deno.test("Region rejects unaligned atomic accesses", () => {
  const r = Region.alloc(4096);
  assertThrows(() => r.load16(1), RegionAccessError);
  assertThrows(() => r.store32(2, 1), RegionAccessError);
  r.store32(8, 0xdeadbeef);
  assertEquals(r.load32(8), 0xdeadbeef);
  assertEquals(r.add32(8, 1), 0xdeadbeef);
  assertEquals(r.load32(8), 0xdeadbef0);
});

Deno.test("Region.getOffset64() reports addresses at or above 2^32 as -1", () => {
  const r = Region.alloc(4096);
  r.setU64(0, 0x1_0000_0010n);
  assertEquals(r.getOffset64(0), -1);
  r.setU64(0, 0xffff_fff0n);
  assertEquals(r.getOffset64(0), 0xffff_fff0);
  r.setOffset64(8, 1234);
  assertEquals(r.getU64(8), 1234n);
});

Deno.test("Region refuses every access after close() and detaches plain buffers", () => {
  const r = new Region(new ArrayBuffer(4096));
  const view = r.span(0, 16);
  r.close();
  assert(r.closed);
  assertEquals(view.length, 0, "views are detached");
  assertThrows(() => r.span(0, 1), RegionAccessError, "closed");
  assertThrows(() => r.load16(0), RegionAccessError);
  r.close(); // idempotent
});

Deno.test("checkRegionSize() names the size it rejects", () => {
  assertThrows(() => checkRegionSize(5000), RangeError, "received 5000");
  assertThrows(() => checkRegionSize(2048), RangeError, "received 2048");
  assertThrows(() => checkRegionSize(MAX_REGION_SIZE * 2), RangeError);
  checkRegionSize(4096);
  checkRegionSize(MAX_REGION_SIZE);
});

Deno.test("Region.alloc() is backed by shared memory that another thread can be handed", () => {
  const r = Region.alloc(4096);
  assertEquals(r.backing.kind, "shared");
  r.close();
  assertThrows(() => r.getU8(0), RegionAccessError, "closed");
});
