/**
 * Ring-level behaviour of the device queue: corrupt indices break the queue
 * (the device then needs a reset), and EVENT_IDX / flag suppression in the
 * device-to-driver direction.
 */
import { assert, assertEquals, assertMatch } from "../../../dev_deps.ts";
import { DESC_F, rawQueue } from "../../_support/raw_ring.ts";
import {
  AVAIL_FLAGS,
  availEventOffset,
  USED_FLAGS,
  usedEventOffset,
} from "../../../device/virtqueue/split_ring.ts";
import {
  AVAIL_F_NO_INTERRUPT,
  USED_F_NO_NOTIFY,
} from "../../../device/virtio.ts";
import { needEvent } from "../../../device/virtqueue/event_idx.ts";

Deno.test("device rejects an available index that jumps ahead by more than the queue size", () => {
  const q = rawQueue(8);
  q.driver.setAvailIdx(9);
  assertEquals(q.device.pop(q.segments), -1);
  assertMatch(
    q.device.broken!,
    /available index moved from 0 to 9, more than the queue size 8/,
  );
  // Once broken the queue stays stopped, whatever the driver does next.
  q.driver.setAvailIdx(1);
  assertEquals(q.device.pending(), 0);
  assertEquals(q.device.pop(q.segments), -1);
});

Deno.test("device rejects an available index that moves backwards", () => {
  const q = rawQueue(8);
  q.driver.desc(0, { addr: q.bufferStart, len: 8 });
  q.driver.offer(0);
  assertEquals(q.device.pop(q.segments), 0);
  q.driver.setAvailIdx(0); // backwards by one: 0xffff ahead in u16 terms
  assertEquals(q.device.pop(q.segments), -1);
  assertMatch(q.device.broken!, /moved from 1 to 0/);
});

Deno.test("device rejects a head index outside the queue", () => {
  const q = rawQueue(8);
  q.driver.offer(8);
  assertEquals(q.device.pop(q.segments), -1);
  assertMatch(q.device.broken!, /names head 8, outside a queue of 8/);
  assertEquals(
    q.driver.usedIdx(),
    0,
    "nothing is returned for an invalid head",
  );
});

Deno.test("device accepts an available index exactly a queue size ahead", () => {
  const q = rawQueue(4);
  for (let i = 0; i < 4; i++) {
    q.driver.desc(i, { addr: q.bufferStart + i * 8, len: 8 });
  }
  q.driver.offer(0, 1, 2, 3);
  assertEquals(q.device.pending(), 4);
  for (let i = 0; i < 4; i++) assertEquals(q.device.pop(q.segments), i);
  assertEquals(q.device.broken, null);
});

Deno.test("device indices wrap around 65536 without losing a chain", () => {
  const q = rawQueue(2);
  q.driver.desc(0, { addr: q.bufferStart, len: 8 });
  for (let n = 0; n < 70_000; n++) {
    q.driver.offer(0);
    q.segments.clear();
    assertEquals(q.device.pop(q.segments), 0);
    q.device.push(0, 0);
    q.device.publish();
  }
  assertEquals(q.driver.usedIdx(), 70_000 & 0xffff);
  assertEquals(q.device.broken, null);
});

Deno.test("device publishes used entries only on publish()", () => {
  const q = rawQueue(4);
  q.driver.desc(0, { addr: q.bufferStart, len: 8 });
  q.driver.desc(1, { addr: q.bufferStart, len: 8 });
  q.driver.offer(0, 1);
  q.device.pop(q.segments);
  q.device.pop(q.segments);
  q.device.push(0, 0);
  q.device.push(1, 0);
  assertEquals(q.driver.usedIdx(), 0);
  q.device.publish();
  assertEquals(q.driver.usedIdx(), 2);
});

Deno.test("needEvent() is true only when the event index lies in [old, new)", () => {
  assert(needEvent(5, 6, 5));
  assert(!needEvent(6, 6, 5));
  assert(needEvent(0xffff, 1, 0xfffe)); // across the wrap
  assert(!needEvent(2, 1, 0xfffe));
  assert(!needEvent(4, 4, 4)); // nothing moved
});

Deno.test("device notifies only when the used index passes used_event (EVENT_IDX)", () => {
  const q = rawQueue(8, {
    eventIdx: true,
    direction: "device-writes",
    name: "rx",
  });
  for (let i = 0; i < 8; i++) {
    q.driver.desc(i, {
      addr: q.bufferStart + i * 64,
      len: 64,
      flags: DESC_F.WRITE,
    });
  }
  q.driver.offer(0, 1, 2, 3, 4, 5);
  const usedEvent = q.device.layout.avail + usedEventOffset(8);
  q.region.store16(usedEvent, 2); // "tell me when entry 2 is used"
  const step = () => {
    q.segments.clear();
    const h = q.device.pop(q.segments);
    q.device.push(h, 0);
    q.device.publish();
    return q.device.shouldNotify();
  };
  assertEquals([step(), step()], [false, false]); // used idx 1, 2
  assertEquals(step(), true); // used idx 3: entry 2 is now used
  assertEquals(step(), false);
  q.region.store16(usedEvent, 3); // already passed: no more notifications
  assertEquals(step(), false);
  assertEquals(q.device.stats.notifications, 1);
});

Deno.test("device honours NO_INTERRUPT when EVENT_IDX is off", () => {
  const q = rawQueue(4, { direction: "device-writes", name: "rx" });
  for (let i = 0; i < 4; i++) {
    q.driver.desc(i, { addr: q.bufferStart, len: 64, flags: DESC_F.WRITE });
  }
  q.driver.offer(0, 1);
  q.region.store16(q.device.layout.avail + AVAIL_FLAGS, AVAIL_F_NO_INTERRUPT);
  q.device.push(q.device.pop(q.segments), 0);
  q.device.publish();
  assert(!q.device.shouldNotify());
  q.region.store16(q.device.layout.avail + AVAIL_FLAGS, 0);
  q.device.push(q.device.pop(q.segments), 0);
  q.device.publish();
  assert(q.device.shouldNotify());
  assert(!q.device.shouldNotify(), "nothing new since the last decision");
});

Deno.test("device asks for kicks through avail_event and sees buffers that raced in", () => {
  const q = rawQueue(8, { eventIdx: true });
  q.driver.desc(0, { addr: q.bufferStart, len: 8 });
  assert(!q.device.enableNotifications(), "nothing pending");
  assertEquals(q.region.load16(q.device.layout.used + availEventOffset(8)), 0);
  q.driver.offer(0);
  assert(q.device.enableNotifications(), "a buffer arrived: keep going");
  q.device.pop(q.segments);
  q.device.enableNotifications();
  assertEquals(q.region.load16(q.device.layout.used + availEventOffset(8)), 1);
});

Deno.test("device sets and clears NO_NOTIFY when EVENT_IDX is off", () => {
  const q = rawQueue(8);
  q.device.disableNotifications();
  assertEquals(
    q.region.load16(q.device.layout.used + USED_FLAGS),
    USED_F_NO_NOTIFY,
  );
  q.device.enableNotifications();
  assertEquals(q.region.load16(q.device.layout.used + USED_FLAGS), 0);
});
