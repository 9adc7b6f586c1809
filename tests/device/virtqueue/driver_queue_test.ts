/**
 * The driver role: posting, publishing, harvesting, and what it does when
 * the device returns something impossible.
 */
import { assert, assertEquals, assertMatch } from "../../../dev_deps.ts";
import { Region } from "../../../device/shm/region.ts";
import { DriverQueue } from "../../../device/virtqueue/driver_queue.ts";
import {
  AVAIL_FLAGS,
  AVAIL_IDX,
  availEventOffset,
  packSplitRing,
  USED_FLAGS,
  USED_IDX,
  USED_RING,
  usedEventOffset,
} from "../../../device/virtqueue/split_ring.ts";
import {
  AVAIL_F_NO_INTERRUPT,
  USED_F_NO_NOTIFY,
} from "../../../device/virtio.ts";

function driver(size: number, eventIdx = false) {
  const region = Region.alloc(1 << 16);
  const { layout } = packSplitRing(0, size);
  const q = new DriverQueue(region, layout, { name: "rx", eventIdx });
  /** What a (possibly lying) device writes into the used ring. */
  const deviceUses = (entries: Array<[number, number]>, idx?: number) => {
    let n = region.load16(layout.used + USED_IDX);
    for (const [id, len] of entries) {
      const at = layout.used + USED_RING + 8 * (n % size);
      region.setU32(at, id);
      region.setU32(at + 4, len);
      n = (n + 1) & 0xffff;
    }
    region.store16(layout.used + USED_IDX, idx ?? n);
  };
  return { region, layout, q, deviceUses };
}

Deno.test("driver posts, publishes and harvests, recycling descriptors", () => {
  const { q, region, layout, deviceUses } = driver(4);
  const h0 = q.addChain([8192, 8300], [44, 100], 1);
  const h1 = q.add(9000, 64, true);
  assertEquals(q.freeCount, 1);
  assertEquals(
    region.load16(layout.avail + AVAIL_IDX),
    0,
    "not visible before publish",
  );
  q.publish();
  assertEquals(region.load16(layout.avail + AVAIL_IDX), 2);
  deviceUses([[h1, 64], [h0, 0]]);
  assertEquals(q.nextUsed(), h1);
  assertEquals(q.usedLength, 64);
  assertEquals(q.nextUsed(), h0);
  assertEquals(q.nextUsed(), -1);
  assertEquals(q.freeCount, 4);
  // All four descriptors can be used again, in one chain.
  assert(q.addChain([1, 2, 3, 4], [1, 1, 1, 1], 0) >= 0);
  assertEquals(q.addChain([1], [1], 0), -1, "no descriptor left");
});

Deno.test("driver rejects a used entry naming a head that is not in flight", () => {
  const { q, deviceUses } = driver(4);
  q.add(8192, 64, true);
  q.publish();
  deviceUses([[3, 10]]);
  assertEquals(q.nextUsed(), -1);
  assertMatch(q.broken!, /names head 3, which is not in flight/);
});

Deno.test("driver rejects a used entry naming a head outside the queue", () => {
  const { q, deviceUses } = driver(4);
  q.add(8192, 64, true);
  q.publish();
  deviceUses([[0x10000, 10]]);
  assertEquals(q.nextUsed(), -1);
  assertMatch(q.broken!, /names head 65536/);
});

Deno.test("driver rejects a used length larger than the buffer it posted", () => {
  const { q, deviceUses } = driver(4);
  const h = q.add(8192, 64, true);
  q.publish();
  deviceUses([[h, 65]]);
  assertEquals(q.nextUsed(), -1);
  assertMatch(q.broken!, /claims 65 bytes written into 64 writable bytes/);
});

Deno.test("driver rejects a used index that runs past what it published", () => {
  const { q, deviceUses } = driver(4);
  const h = q.add(8192, 64, true);
  q.add(9000, 64, true); // added but never published
  deviceUses([[h, 0], [h, 0]]);
  assertEquals(q.nextUsed(), -1);
  assertMatch(q.broken!, /with only 0 chains published/);
});

Deno.test("driver rejects the same head returned twice", () => {
  const { q, deviceUses } = driver(4);
  const h = q.add(8192, 64, true);
  q.add(9000, 64, true);
  q.publish();
  deviceUses([[h, 0], [h, 0]]);
  assertEquals(q.nextUsed(), h);
  assertEquals(q.nextUsed(), -1);
  assertMatch(q.broken!, /not in flight/);
});

Deno.test("driver kicks only when the avail index passes avail_event (EVENT_IDX)", () => {
  const { q, region, layout } = driver(8, true);
  const availEvent = layout.used + availEventOffset(8);
  region.store16(availEvent, 1); // device: "tell me once entry 1 is available"
  q.add(8192, 8, true);
  assertEquals(q.publish(), false); // avail idx 1: entry 0 only
  q.add(8200, 8, true);
  assertEquals(q.publish(), true); // avail idx 2: entry 1 is available
  q.add(8208, 8, true);
  assertEquals(q.publish(), false);
  assertEquals(q.publish(), false, "nothing new: no kick");
});

Deno.test("driver honours NO_NOTIFY when EVENT_IDX is off", () => {
  const { q, region, layout } = driver(8);
  region.store16(layout.used + USED_FLAGS, USED_F_NO_NOTIFY);
  q.add(8192, 8, true);
  assertEquals(q.publish(), false);
  region.store16(layout.used + USED_FLAGS, 0);
  q.add(8200, 8, true);
  assertEquals(q.publish(), true);
});

Deno.test("driver asks for interrupts through used_event and NO_INTERRUPT", () => {
  const e = driver(8, true);
  const h = e.q.add(8192, 8, true);
  e.q.publish();
  assert(!e.q.enableCallbacks());
  assertEquals(e.region.load16(e.layout.avail + usedEventOffset(8)), 0);
  e.deviceUses([[h, 8]]);
  assert(e.q.enableCallbacks(), "a used entry raced in");
  e.q.nextUsed();
  e.q.enableCallbacks();
  assertEquals(e.region.load16(e.layout.avail + usedEventOffset(8)), 1);

  const f = driver(8);
  f.q.disableCallbacks();
  assertEquals(
    f.region.load16(f.layout.avail + AVAIL_FLAGS),
    AVAIL_F_NO_INTERRUPT,
  );
  f.q.enableCallbacks();
  assertEquals(f.region.load16(f.layout.avail + AVAIL_FLAGS), 0);
});
