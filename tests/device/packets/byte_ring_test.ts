import { assert, assertEquals } from "../../../dev_deps.ts";
import { ByteRing } from "../../../device/packets/byte_ring.ts";
import { Prng } from "../../_support/prng.ts";

Deno.test("ByteRing allocates in order and reuses space once the oldest is released", () => {
  const r = new ByteRing(1000, 100, 8);
  const a = r.alloc(40)!;
  const b = r.alloc(40)!;
  assertEquals([a.offset, b.offset], [1000, 1040]);
  assertEquals(
    r.alloc(30),
    null,
    "only 20 bytes left at the end, 0 at the start",
  );
  r.release(b.ticket);
  assertEquals(r.alloc(30), null, "b is released but a, older, is not");
  r.release(a.ticket);
  assertEquals(r.used, 0);
  assertEquals(r.alloc(100)!.offset, 1000);
});

Deno.test("ByteRing wraps to the start when the end is too short", () => {
  const r = new ByteRing(0, 100, 8);
  const a = r.alloc(60)!;
  const b = r.alloc(30)!;
  r.release(a.ticket);
  const c = r.alloc(50)!; // 10 left at the end: wraps, skipping them
  assertEquals(c.offset, 0);
  assertEquals(r.used, 30 + 50 + 10);
  assertEquals(r.alloc(11), null);
  r.release(b.ticket);
  r.release(c.ticket);
  assertEquals(r.used, 0);
});

Deno.test("ByteRing refuses more live allocations than it tracks", () => {
  const r = new ByteRing(0, 100, 2);
  assert(r.alloc(1));
  assert(r.alloc(1));
  assertEquals(r.alloc(1), null);
});

Deno.test("ByteRing never hands out overlapping live ranges (seeded)", () => {
  const rng = new Prng(7);
  const r = new ByteRing(0, 4096, 64);
  const live = new Map<number, [number, number]>();
  for (let step = 0; step < 20_000; step++) {
    if (live.size > 0 && rng.chance(0.5)) {
      const tickets = [...live.keys()];
      const t = rng.pick(tickets);
      live.delete(t);
      r.release(t);
      continue;
    }
    const len = rng.int(1, 1500);
    const a = r.alloc(len);
    if (a === null) continue;
    assert(a.offset >= 0 && a.offset + len <= 4096);
    for (const [s, l] of live.values()) {
      assert(
        a.offset + len <= s || s + l <= a.offset,
        `overlap at step ${step}`,
      );
    }
    live.set(a.ticket, [a.offset, len]);
  }
  for (const t of live.keys()) r.release(t);
  assertEquals(r.used, 0);
});
