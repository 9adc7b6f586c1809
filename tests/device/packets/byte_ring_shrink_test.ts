/**
 * ByteRing.shrinkLast and ByteRing.undoLast: giving back the end of, or all
 * of, the newest allocation (what DriverTx.sendFrom does with transmit space
 * a short read did not fill), checked by hand and against a model.
 */
import { assert, assertEquals, assertThrows } from "../../../dev_deps.ts";
import { ByteRing } from "../../../device/packets/byte_ring.ts";
import { Prng } from "../../_support/prng.ts";

/** What a ring shows from outside: its figures and where it would put things. */
function observe(r: ByteRing) {
  return { used: r.used, largestFree: r.largestFree() };
}

/**
 * A ring with a wrapped newest allocation: a = [0, 60) released, b = [60, 90)
 * live, c = [0, 50) live after skipping the 10 bytes at the end.
 */
function wrappedRing() {
  const r = new ByteRing(1000, 100, 8);
  const a = r.alloc(60)!;
  const b = r.alloc(30)!;
  r.release(a.ticket);
  const c = r.alloc(50)!;
  assertEquals(c.offset, 1000, "c wraps to the start");
  assertEquals(r.used, 30 + 50 + 10, "the 10 skipped bytes count as used");
  return { r, b, c };
}

Deno.test("shrinkLast keeps the first bytes of the newest allocation and frees the rest", () => {
  const r = new ByteRing(1000, 100, 8);
  const a = r.alloc(60)!;
  r.shrinkLast(a.ticket, 25);
  assertEquals(observe(r), { used: 25, largestFree: 75 });
  const b = r.alloc(30)!;
  assertEquals(
    b.offset,
    1025,
    "the next allocation lands right after a's kept bytes",
  );
  assertEquals(r.used, 55);
  r.release(a.ticket);
  r.release(b.ticket);
  assertEquals(
    r.used,
    0,
    "releasing a shrunk allocation gives back what it kept",
  );
});

Deno.test("shrinkLast frees the end of the newest allocation behind older live ones", () => {
  const r = new ByteRing(0, 100, 8);
  const a = r.alloc(30)!;
  const b = r.alloc(50)!;
  r.shrinkLast(b.ticket, 10);
  assertEquals(observe(r), { used: 40, largestFree: 60 });
  const c = r.alloc(60)!;
  assertEquals(c.offset, 40);
  assertEquals(observe(r), { used: 100, largestFree: 0 });
  assertEquals(r.alloc(1), null);
  r.release(a.ticket);
  assertEquals(r.used, 70);
  r.release(c.ticket);
  assertEquals(r.used, 70, "b, older than c, is still live");
  r.release(b.ticket);
  assertEquals(observe(r), { used: 0, largestFree: 100 });
});

Deno.test("shrinkLast of a wrapped allocation keeps the bytes it skipped at the end accounted", () => {
  const { r, b, c } = wrappedRing();
  r.shrinkLast(c.ticket, 20);
  assertEquals(observe(r), { used: 30 + 20 + 10, largestFree: 40 });
  const d = r.alloc(40)!;
  assertEquals(d.offset, 1020, "d goes right after c's kept 20 bytes");
  assertEquals(r.alloc(1), null, "b starts at 60: nothing is free");
  r.release(b.ticket);
  assertEquals(r.used, 10 + 20 + 40, "the 10 bytes c skipped stay c's");
  r.release(c.ticket);
  r.release(d.ticket);
  assertEquals(observe(r), { used: 0, largestFree: 100 });
});

Deno.test("shrinkLast to the full length changes nothing, even for an allocation ending at the ring's end", () => {
  const r = new ByteRing(0, 100, 8);
  const a = r.alloc(40)!;
  const b = r.alloc(60)!; // ends exactly at the end of the ring
  r.shrinkLast(b.ticket, 60);
  assertEquals(observe(r), { used: 100, largestFree: 0 });
  assertEquals(r.alloc(1), null);
  r.release(a.ticket);
  assertEquals(observe(r), { used: 60, largestFree: 40 });
  const c = r.alloc(40)!;
  assertEquals(c.offset, 0);
  assertEquals(r.used, 100, "nothing was skipped: b ended at the end");
  r.release(b.ticket);
  r.release(c.ticket);
  assertEquals(r.used, 0);
});

Deno.test("shrinkLast may be repeated on the same allocation", () => {
  const r = new ByteRing(0, 100, 8);
  const a = r.alloc(80)!;
  r.shrinkLast(a.ticket, 50);
  r.shrinkLast(a.ticket, 5);
  assertEquals(observe(r), { used: 5, largestFree: 95 });
  assertEquals(r.alloc(95)!.offset, 5);
});

Deno.test("undoLast on the only allocation leaves the ring empty", () => {
  const r = new ByteRing(1000, 100, 8);
  const a = r.alloc(30)!;
  r.undoLast(a.ticket);
  assertEquals(observe(r), { used: 0, largestFree: 100 });
  const b = r.alloc(100)!;
  assertEquals(
    b,
    { offset: 1000, ticket: a.ticket },
    "the same slot and place again",
  );
  r.release(b.ticket);
  assertEquals(r.used, 0);
});

Deno.test("undoLast restores the ring exactly: what follows matches a ring that never made the allocation", () => {
  const ops = (r: ByteRing, extra: boolean) => {
    const out: unknown[] = [];
    const a = r.alloc(40)!;
    const b = r.alloc(35)!;
    r.release(a.ticket);
    if (extra) {
      const x = r.alloc(20)!;
      const y = r.alloc(5)!;
      r.shrinkLast(y.ticket, 2);
      r.undoLast(y.ticket);
      r.undoLast(x.ticket);
    }
    out.push(observe(r));
    for (const len of [25, 30, 10, 40]) out.push(r.alloc(len), observe(r));
    r.release(b.ticket);
    out.push(observe(r), r.alloc(30), observe(r));
    return out;
  };
  assertEquals(
    ops(new ByteRing(0, 100, 8), true),
    ops(new ByteRing(0, 100, 8), false),
  );
});

Deno.test("undoLast of an allocation that wrapped puts the head back at the end, before the skipped bytes", () => {
  const { r, b, c } = wrappedRing();
  r.undoLast(c.ticket);
  assertEquals(observe(r), { used: 30, largestFree: 60 });
  const d = r.alloc(10)!;
  assertEquals(d.offset, 1090, "the 10 bytes at the end are usable again");
  assertEquals(r.alloc(60)!.offset, 1000, "and the start still is");
  assertEquals(r.used, 30 + 10 + 60);
  r.release(b.ticket);
  assertEquals(r.used, 70);
});

Deno.test("undoLast after shrinkLast gives back the whole allocation and what it skipped", () => {
  const { r, c } = wrappedRing();
  r.shrinkLast(c.ticket, 7);
  r.undoLast(c.ticket);
  assertEquals(observe(r), { used: 30, largestFree: 60 });
});

Deno.test("undoLast takes back several allocations newest first", () => {
  const r = new ByteRing(0, 100, 4);
  const a = r.alloc(10)!;
  const b = r.alloc(20)!;
  const c = r.alloc(30)!;
  const d = r.alloc(40)!;
  assertEquals(r.alloc(1), null, "all four slots are taken");
  r.undoLast(d.ticket);
  r.undoLast(c.ticket);
  r.undoLast(b.ticket);
  assertEquals(observe(r), { used: 10, largestFree: 90 });
  const e = r.alloc(90)!;
  assertEquals(e.offset, 10);
  assertEquals(e.ticket, b.ticket, "b's slot is free again");
  r.undoLast(e.ticket);
  r.undoLast(a.ticket);
  assertEquals(observe(r), { used: 0, largestFree: 100 });
});

Deno.test("shrinkLast and undoLast refuse a ticket that is not the newest allocation", () => {
  const r = new ByteRing(0, 100, 8);
  assertThrows(() => r.undoLast(0), RangeError, "not the newest");
  assertThrows(() => r.shrinkLast(0, 1), RangeError, "not the newest");
  const a = r.alloc(10)!;
  const b = r.alloc(20)!;
  assertThrows(() => r.undoLast(a.ticket), RangeError, "not the newest");
  assertThrows(() => r.shrinkLast(a.ticket, 5), RangeError, "not the newest");
  assertThrows(() => r.undoLast(b.ticket + 1), RangeError, "not the newest");
  assertThrows(() => r.undoLast(-1), RangeError);
  assertEquals(observe(r), { used: 30, largestFree: 70 }, "nothing changed");
  r.undoLast(b.ticket);
  assertThrows(
    () => r.undoLast(b.ticket),
    RangeError,
    undefined,
    "an undone ticket is gone",
  );
  assertThrows(() => r.shrinkLast(b.ticket, 1), RangeError);
  assertEquals(observe(r), { used: 10, largestFree: 90 });
});

Deno.test("shrinkLast and undoLast refuse a newest allocation already released", () => {
  const r = new ByteRing(0, 100, 8);
  const a = r.alloc(10)!;
  const b = r.alloc(20)!;
  r.release(b.ticket); // released, but held behind a
  assertThrows(() => r.undoLast(b.ticket), RangeError, "not the newest");
  assertThrows(() => r.shrinkLast(b.ticket, 5), RangeError, "not the newest");
  assertEquals(r.used, 30);
  r.release(a.ticket);
  assertEquals(r.used, 0);
  assertThrows(
    () => r.undoLast(a.ticket),
    RangeError,
    undefined,
    "the ring is empty",
  );
  assertThrows(() => r.undoLast(b.ticket), RangeError);
  assertThrows(() => r.shrinkLast(a.ticket, 1), RangeError);
  assertEquals(observe(r), { used: 0, largestFree: 100 });
});

Deno.test("shrinkLast refuses a length outside one to the allocation's own length", () => {
  const { r, c } = wrappedRing();
  for (const bad of [0, -1, 51, 60, 1.5, NaN, Infinity]) {
    assertThrows(
      () => r.shrinkLast(c.ticket, bad),
      RangeError,
      "Cannot shrink an allocation of 50 bytes",
      `length ${bad}`,
    );
  }
  assertEquals(observe(r), { used: 90, largestFree: 10 }, "nothing changed");
  r.shrinkLast(c.ticket, 50);
  r.shrinkLast(c.ticket, 1);
  assertEquals(r.used, 30 + 1 + 10);
});

interface Live {
  ticket: number;
  start: number;
  len: number;
  skipped: number;
  released: boolean;
}

/** A plain-array model of the ring: its figures follow from the live list. */
class Model {
  live: Live[] = [];
  constructor(readonly size: number, readonly max: number) {}

  get used(): number {
    return this.live.reduce((s, a) => s + a.len + a.skipped, 0);
  }

  /** Oldest start, newest end, and whether the newest wrapped past the oldest. */
  #ends() {
    const oldest = this.live[0]!;
    const newest = this.live[this.live.length - 1]!;
    return {
      tail: oldest.start,
      head: newest.start + newest.len,
      wrapped: newest.start < oldest.start,
    };
  }

  largestFree(): number {
    if (this.live.length === this.max) return 0;
    if (this.live.length === 0) return this.size;
    const { tail, head, wrapped } = this.#ends();
    return wrapped ? tail - head : Math.max(this.size - head, tail);
  }

  /** Where an allocation of `len` goes: [start, skipped], or null. */
  place(len: number): [number, number] | null {
    if (len <= 0 || len > this.size || this.live.length === this.max) {
      return null;
    }
    if (this.live.length === 0) return [0, 0];
    const { tail, head, wrapped } = this.#ends();
    if (wrapped) return tail - head >= len ? [head, 0] : null;
    if (this.size - head >= len) return [head, 0];
    return tail >= len ? [0, this.size - head] : null;
  }

  release(ticket: number): void {
    this.live.find((a) => a.ticket === ticket && !a.released)!.released = true;
    while (this.live.length > 0 && this.live[0]!.released) this.live.shift();
  }
}

Deno.test("ByteRing with shrinkLast and undoLast matches a model and never hands out overlapping live ranges (seeded)", () => {
  for (const seed of [1, 2, 3]) {
    const rng = new Prng(0xb17e + seed);
    const size = rng.pick([64, 1000, 4096]);
    const maxAllocations = rng.pick([1, 3, 16, 64]);
    const base = 5000;
    const r = new ByteRing(base, size, maxAllocations);
    const m = new Model(size, maxAllocations);
    for (let step = 0; step < 20_000; step++) {
      const at = `seed ${seed}, step ${step}`;
      const newest = m.live[m.live.length - 1];
      const roll = rng.int(0, 99);
      if (roll < 40) {
        const len = rng.chance(0.1)
          ? m.largestFree() + rng.int(0, 1)
          : rng.int(1, Math.ceil(size / 3));
        const want = m.place(len);
        const got = r.alloc(len);
        if (want === null) {
          assertEquals(got, null, at);
        } else {
          assert(got !== null, `alloc(${len}) refused, ${at}`);
          assertEquals(got.offset - base, want[0], at);
          for (const a of m.live) {
            assert(
              want[0] + len <= a.start || a.start + a.len <= want[0],
              `overlap with a live allocation, ${at}`,
            );
          }
          assert(
            !m.live.some((a) => a.ticket === got.ticket),
            `ticket reused while live, ${at}`,
          );
          m.live.push({
            ticket: got.ticket,
            start: want[0],
            len,
            skipped: want[1],
            released: false,
          });
        }
      } else if (roll < 55 && newest && !newest.released) {
        const len = rng.int(1, newest.len);
        r.shrinkLast(newest.ticket, len);
        newest.len = len;
      } else if (roll < 70 && newest && !newest.released) {
        r.undoLast(newest.ticket);
        m.live.pop();
      } else if (roll < 75 && m.live.length > 0) {
        // Anything but the newest unreleased allocation is refused.
        const a = rng.pick(m.live);
        if (a !== newest || a.released) {
          assertThrows(() => r.undoLast(a.ticket), RangeError, undefined, at);
          assertThrows(
            () => r.shrinkLast(a.ticket, 1),
            RangeError,
            undefined,
            at,
          );
        } else {
          assertThrows(
            () => r.shrinkLast(a.ticket, a.len + 1),
            RangeError,
            undefined,
            at,
          );
        }
      } else {
        const unreleased = m.live.filter((a) => !a.released);
        if (unreleased.length > 0) {
          const a = rng.pick(unreleased);
          r.release(a.ticket);
          m.release(a.ticket);
        }
      }
      assertEquals(r.used, m.used, `used, ${at}`);
      assertEquals(r.largestFree(), m.largestFree(), `largestFree, ${at}`);
      // `used` counts the bytes an allocation skipped at the end until it is
      // released, even once a later allocation reuses them, so it may exceed
      // the size; the bytes really held never do.
      assert(m.live.reduce((s, a) => s + a.len, 0) <= size, at);
    }
    for (const a of m.live.filter((a) => !a.released)) r.release(a.ticket);
    assertEquals(r.used, 0, `seed ${seed}: everything released`);
    assertEquals(r.largestFree(), size);
  }
});
