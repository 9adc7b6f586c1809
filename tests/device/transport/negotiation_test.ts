/**
 * The transport's life cycle, both roles in one process: header set-up,
 * the status handshake, feature and queue-config validation, resets,
 * restarts and liveness.
 */
import {
  assert,
  assertEquals,
  assertMatch,
  assertRejects,
  assertThrows,
} from "../../../dev_deps.ts";
import { Region } from "../../../device/shm/region.ts";
import {
  DeviceTransport,
  TransportError,
} from "../../../device/transport/device_transport.ts";
import { DriverTransport } from "../../../device/transport/driver_transport.ts";
import {
  H,
  HEADER_SIZE,
  MAGIC,
  Q,
  queueRecord,
} from "../../../device/transport/layout.ts";
import { OFFERED_FEATURES } from "../../../device/transport/features.ts";
import { featureBit, STATUS } from "../../../device/virtio.ts";

const SIZE = 1 << 20;

/** Polls the device every millisecond while `fn` runs (the device's loop). */
async function withDevice<T>(
  device: DeviceTransport,
  fn: () => Promise<T>,
): Promise<T> {
  const changes: unknown[] = [];
  const timer = setInterval(() => {
    const c = device.poll();
    if (c) changes.push(c);
  }, 1);
  try {
    return await fn();
  } finally {
    clearInterval(timer);
  }
}

/** Writes a driver status the way a driver does, and lets the device answer. */
function driverWrites(region: Region, device: DeviceTransport, status: number) {
  region.store32(H.DRIVER_STATUS, status);
  region.add32(H.STATUS_SEQ, 1);
  const change = device.poll();
  return {
    change,
    status: region.load32(H.DEVICE_STATUS),
    ack: region.load32(H.STATUS_ACK),
  };
}

/** A negotiated pair; returns both sides. */
async function running(options: { queueSize?: number } = {}) {
  const region = Region.alloc(SIZE);
  const device = DeviceTransport.attach(region, {
    guestCid: 7,
    driverTimeoutMs: 200,
  });
  const driver = new DriverTransport(region, {
    deviceTimeoutMs: 500,
    ...options,
  });
  const queues = await withDevice(device, () => driver.start(1000));
  return { region, device, driver, queues };
}

Deno.test("device initialises a zeroed region's header", () => {
  const region = Region.alloc(SIZE);
  const device = DeviceTransport.attach(region, { guestCid: 42 });
  assertEquals(region.load32(H.MAGIC), MAGIC);
  assertEquals(region.getU16(H.VERSION), 1);
  assertEquals(region.getU16(H.HEADER_SIZE), HEADER_SIZE);
  assertEquals(region.getU32(H.REGION_SIZE), SIZE);
  assertEquals(region.getU64(H.DEVICE_FEATURES), OFFERED_FEATURES);
  assertEquals(region.getU64(H.GUEST_CID), 42n);
  assertEquals(device.generation, 1);
  assertEquals(device.state, "waiting");
  assertEquals(
    region.load32(H.CONFIG_GENERATION) % 2,
    0,
    "config generation is even when stable",
  );
});

Deno.test("device refuses a region that is too small", () => {
  const err = assertThrows(
    () => DeviceTransport.attach(Region.alloc(128 * 1024), { guestCid: 3 }),
    TransportError,
  );
  assertMatch(
    err.message,
    /131072 bytes is too small: ivsock needs at least 262144/,
  );
});

Deno.test("device refuses a region that holds something else", () => {
  const region = Region.alloc(SIZE);
  region.setU32(0, 0xdeadbeef);
  const err = assertThrows(
    () => DeviceTransport.attach(region, { guestCid: 3 }),
    TransportError,
  );
  assertMatch(
    err.message,
    /found 0xdeadbeef, expected 0x4b535649 "IVSK".*another program/,
  );
  assertEquals(region.getU32(0), 0xdeadbeef, "nothing was overwritten");
});

Deno.test("device refuses a non-zero region even when its first word is zero", () => {
  const region = Region.alloc(SIZE);
  region.setU8(100, 1);
  assertThrows(
    () => DeviceTransport.attach(region, { guestCid: 3 }),
    TransportError,
    "not zeroed",
  );
});

Deno.test("device refuses another layout version", () => {
  const region = Region.alloc(SIZE);
  DeviceTransport.attach(region, { guestCid: 3 });
  region.setU16(H.VERSION, 2);
  assertThrows(
    () => DeviceTransport.attach(region, { guestCid: 3 }),
    TransportError,
    "layout version 2, this ivsock speaks version 1",
  );
});

Deno.test("device refuses a region whose recorded size differs from the mapping", () => {
  const region = Region.alloc(SIZE);
  DeviceTransport.attach(region, { guestCid: 3 });
  region.setU32(H.REGION_SIZE, SIZE * 2);
  assertThrows(
    () => DeviceTransport.attach(region, { guestCid: 3 }),
    TransportError,
    "resized",
  );
});

Deno.test("device rejects reserved guest CIDs and bad queue limits", () => {
  for (const cid of [0, 1, 2, 0xffffffff, 3.5]) {
    assertThrows(
      () => DeviceTransport.attach(Region.alloc(SIZE), { guestCid: cid }),
      RangeError,
      `received ${cid}`,
    );
  }
  assertThrows(
    () =>
      DeviceTransport.attach(Region.alloc(SIZE), {
        guestCid: 3,
        maxQueueSize: 100,
      }),
    RangeError,
    "power of two",
  );
});

Deno.test("driver walks ACKNOWLEDGE, DRIVER, FEATURES_OK and DRIVER_OK and the device goes live", async () => {
  const { device, driver, queues, region } = await running();
  assertEquals(device.state, "running");
  assertEquals(
    region.load32(H.DEVICE_STATUS),
    STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FEATURES_OK | STATUS.DRIVER_OK,
  );
  assertEquals(queues.guestCid, 7);
  assert(queues.mergeable);
  assertEquals(device.queues!.features, queues.features);
  assertEquals(queues.rx.layout.size, 256);
  assert(driver.queues !== null);
});

Deno.test("device answers every status write in order, acknowledging its sequence number", () => {
  const region = Region.alloc(SIZE);
  const device = DeviceTransport.attach(region, { guestCid: 3 });
  assertEquals(
    driverWrites(region, device, STATUS.ACKNOWLEDGE).status,
    STATUS.ACKNOWLEDGE,
  );
  const r = driverWrites(region, device, STATUS.ACKNOWLEDGE | STATUS.DRIVER);
  assertEquals(r.status, STATUS.ACKNOWLEDGE | STATUS.DRIVER);
  assertEquals(r.ack, region.load32(H.STATUS_SEQ));
});

Deno.test("device refuses FEATURES_OK for a feature it did not offer, and says why", () => {
  const region = Region.alloc(SIZE);
  const device = DeviceTransport.attach(region, { guestCid: 3 });
  driverWrites(region, device, STATUS.ACKNOWLEDGE | STATUS.DRIVER);
  region.setU64(H.DRIVER_FEATURES, featureBit(32) | featureBit(34));
  const r = driverWrites(
    region,
    device,
    STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FEATURES_OK,
  );
  assertEquals(r.status & STATUS.FEATURES_OK, 0);
  assertMatch(device.reason, /bit 34 \(RING_PACKED\), not offered/);
});

Deno.test("device refuses FEATURES_OK without VERSION_1", () => {
  const region = Region.alloc(SIZE);
  const device = DeviceTransport.attach(region, { guestCid: 3 });
  driverWrites(region, device, STATUS.ACKNOWLEDGE | STATUS.DRIVER);
  region.setU64(H.DRIVER_FEATURES, featureBit(0));
  const r = driverWrites(
    region,
    device,
    STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FEATURES_OK,
  );
  assertEquals(r.status & STATUS.FEATURES_OK, 0);
  assertMatch(device.reason, /VERSION_1/);
});

Deno.test("driver reports the device's refusal of its features", async () => {
  const region = Region.alloc(SIZE);
  // A device that offers no VERSION_1 cannot be driven at all.
  const device = DeviceTransport.attach(region, {
    guestCid: 3,
    features: featureBit(0),
  });
  const driver = new DriverTransport(region, { deviceTimeoutMs: 500 });
  await withDevice(
    device,
    () =>
      assertRejects(
        () => driver.start(1000),
        TransportError,
        "does not offer VERSION_1",
      ),
  );
  assertEquals(region.load32(H.DRIVER_STATUS), STATUS.FAILED);
});

Deno.test("device needs a reset when DRIVER_OK comes before FEATURES_OK", () => {
  const region = Region.alloc(SIZE);
  const device = DeviceTransport.attach(region, { guestCid: 3 });
  const r = driverWrites(
    region,
    device,
    STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.DRIVER_OK,
  );
  assert(r.status & STATUS.NEEDS_RESET);
  assertEquals(
    r.ack,
    region.load32(H.STATUS_SEQ),
    "the refusal answers the write",
  );
  assertMatch(
    device.reason,
    /DRIVER_OK before the device accepted FEATURES_OK/,
  );
});

/** Negotiates up to FEATURES_OK by hand, lets `tamper` edit the queue config, then sets DRIVER_OK. */
async function badConfig(tamper: (region: Region) => void): Promise<string> {
  const { region, device, driver } = await running();
  // Renegotiate with the real driver so that valid config is in place, then
  // break it and replay DRIVER_OK by hand.
  driverWrites(region, device, 0);
  driverWrites(region, device, STATUS.ACKNOWLEDGE | STATUS.DRIVER);
  const ok = driverWrites(
    region,
    device,
    STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FEATURES_OK,
  );
  assert(ok.status & STATUS.FEATURES_OK);
  tamper(region);
  const r = driverWrites(
    region,
    device,
    STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FEATURES_OK | STATUS.DRIVER_OK,
  );
  assert(r.status & STATUS.NEEDS_RESET, "NEEDS_RESET is set");
  assertEquals(
    r.ack,
    region.load32(H.STATUS_SEQ),
    "the refusal answers the write",
  );
  assertEquals(r.status & STATUS.DRIVER_OK, 0);
  assertEquals(device.state, "needs-reset");
  assertEquals(device.queues, null);
  void driver;
  return device.reason;
}

Deno.test("device needs a reset when a queue size is not a power of two", async () => {
  assertMatch(
    await badConfig((r) => r.setU16(queueRecord(1) + Q.SIZE, 100)),
    /tx queue: queue size 100/,
  );
});

Deno.test("device needs a reset when a queue exceeds its size limit", async () => {
  assertMatch(
    await badConfig((r) => r.setU16(queueRecord(0) + Q.SIZE, 2048)),
    /exceeds the device's limit 1024/,
  );
});

Deno.test("device needs a reset when a queue is not enabled", async () => {
  assertMatch(
    await badConfig((r) => r.setU16(queueRecord(2) + Q.ENABLE, 0)),
    /event queue is not enabled/,
  );
});

Deno.test("device needs a reset when a ring overlaps the header", async () => {
  assertMatch(
    await badConfig((r) => r.setOffset64(queueRecord(0) + Q.DESC, 1024)),
    /overlaps the header/,
  );
});

Deno.test("device needs a reset when a ring lies outside the region", async () => {
  assertMatch(
    await badConfig((r) => r.setOffset64(queueRecord(1) + Q.DEVICE, SIZE - 8)),
    /used ring at .* is outside the region/,
  );
});

Deno.test("device needs a reset when a ring address is at or above 2^32", async () => {
  assertMatch(
    await badConfig((r) => r.setU64(queueRecord(1) + Q.DESC, 1n << 32n)),
    /descriptor table at -1/,
  );
});

Deno.test("device needs a reset when two queues' rings overlap", async () => {
  assertMatch(
    await badConfig((r) =>
      r.setOffset64(
        queueRecord(1) + Q.DESC,
        r.getOffset64(queueRecord(0) + Q.DESC),
      )
    ),
    /tx descriptor table at \d+ overlaps the rx queue/,
  );
});

Deno.test("device needs a reset when a ring overlaps the buffer pool", async () => {
  assertMatch(
    await badConfig((r) =>
      r.setOffset64(queueRecord(2) + Q.DRIVER, r.load32(H.POOL_OFFSET) + 64)
    ),
    /event available ring at \d+ overlaps the buffer pool/,
  );
});

Deno.test("device needs a reset when the buffer pool overlaps the header or runs past the region", async () => {
  assertMatch(
    await badConfig((r) => r.store32(H.POOL_OFFSET, 0)),
    /buffer pool at 0/,
  );
  assertMatch(
    await badConfig((r) => r.store32(H.POOL_SIZE, SIZE)),
    /buffer pool at \d+ \(\+1048576\)/,
  );
});

Deno.test("device clears NEEDS_RESET only when the driver resets", async () => {
  const { region, device } = await running();
  device.fail("test");
  let r = driverWrites(region, device, STATUS.ACKNOWLEDGE);
  assert(r.status & STATUS.NEEDS_RESET, "anything but a reset keeps it");
  r = driverWrites(region, device, 0);
  assertEquals(r.status, 0);
  assertEquals(device.state, "waiting");
  assertEquals(device.reason, "");
});

Deno.test("driver renegotiates after NEEDS_RESET", async () => {
  const { device, driver } = await running();
  device.fail("a ring broke");
  const change = driver.poll();
  assertEquals(change?.type, "lost");
  assertMatch(change!.reason, /needs a reset: a ring broke/);
  await withDevice(device, () => driver.negotiate());
  assertEquals(device.state, "running");
});

Deno.test("device drops everything when the guest driver's generation changes", async () => {
  const { region, device } = await running();
  region.add32(H.DRIVER_GENERATION, 1);
  const change = device.poll();
  assertEquals(change?.type, "deactivated");
  assertMatch((change as { reason: string }).reason, /guest driver restarted/);
  assertEquals(device.queues, null);
});

Deno.test("device needs a reset when the driver's heartbeat stops", async () => {
  const { device, driver } = await running();
  driver.beat();
  assertEquals(device.poll(performance.now()), null);
  const change = device.poll(performance.now() + 1000);
  assertMatch(
    (change as { reason: string }).reason,
    /stopped responding \(no heartbeat for \d+ ms\)/,
  );
  assert(device.status & STATUS.NEEDS_RESET);
});

Deno.test("driver notices a device that stops beating", async () => {
  const { driver } = await running();
  const change = driver.poll(performance.now() + 10_000);
  assertMatch(change!.reason, /device stopped responding/);
});

Deno.test("a restarted device asks the running driver to reset, then sends TRANSPORT_RESET", async () => {
  const { region, driver } = await running();
  // The old device process is gone; a new one attaches to the same region.
  const device2 = DeviceTransport.attach(region, { guestCid: 7 });
  assertEquals(device2.generation, 2);
  assert(device2.status & STATUS.NEEDS_RESET);
  assertMatch(device2.reason, /device restarted \(generation 2\)/);
  const change = driver.poll();
  assertMatch(change!.reason, /device restarted \(generation 1 -> 2\)/);
  const queues = await withDevice(device2, () => driver.negotiate());
  assertEquals(queues.events.next(), 0, "TRANSPORT_RESET");
  assertEquals(queues.events.next(), -1, "only once");
});

Deno.test("driver says so when no device initialises the region", async () => {
  const driver = new DriverTransport(Region.alloc(SIZE));
  await assertRejects(
    () => driver.start(30),
    TransportError,
    "No ivsock device initialised the region within 30 ms",
  );
});

Deno.test("driver refuses a region that is not an ivsock region", async () => {
  const region = Region.alloc(SIZE);
  region.store32(0, 0x12345678);
  await assertRejects(
    () => new DriverTransport(region).start(30),
    TransportError,
    "not an ivsock region",
  );
});

Deno.test("driver says so when the device does not answer", async () => {
  const region = Region.alloc(SIZE);
  DeviceTransport.attach(region, { guestCid: 3 }); // initialised, then never polled
  const driver = new DriverTransport(region, { deviceTimeoutMs: 30 });
  await assertRejects(
    () => driver.start(100),
    TransportError,
    "did not answer status 0x0 within 30 ms",
  );
});

Deno.test("FAILED lasts until the driver resets", () => {
  const region = Region.alloc(SIZE);
  const device = DeviceTransport.attach(region, { guestCid: 3 });
  driverWrites(region, device, STATUS.ACKNOWLEDGE | STATUS.FAILED);
  assertEquals(device.state, "failed");
  const r = driverWrites(region, device, STATUS.ACKNOWLEDGE | STATUS.DRIVER);
  assert(r.status & STATUS.FAILED, "still failed");
  assertEquals(device.state, "failed");
  assertEquals(driverWrites(region, device, 0).status, 0);
  assertEquals(device.state, "waiting");
});

Deno.test("a new guest generation clears NEEDS_RESET, the features and the reason", async () => {
  const { region, device } = await running();
  device.fail("something broke");
  region.add32(H.DRIVER_GENERATION, 1);
  device.poll();
  assertEquals(device.state, "waiting");
  assertEquals(device.status, 0);
  assertEquals(device.reason, "");
});
