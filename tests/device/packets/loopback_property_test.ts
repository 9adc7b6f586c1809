/**
 * Seeded property tests: random payloads (0 to 256 KiB) and receive buffer
 * sizes (46 B to 64 KiB) cross between a driver and a device in both
 * directions, byte for byte, with and without mergeable buffers, over queues
 * from size 1 to 32768. A failure names its seed and parameters; rerun one
 * with IVSOCK_SEED=<seed>.
 */
import { assert, assertEquals } from "../../../dev_deps.ts";
import { Prng } from "../../_support/prng.ts";
import {
  dataHeader,
  deviceToDriver,
  driverToDevice,
  makeQueuePair,
  type QueuePairOptions,
} from "../../_support/queue_pair.ts";
import { MAX_PAYLOAD, MRG_HDR_LEN } from "../../../device/packets/header.ts";

const QUEUE_SIZES = [1, 2, 16, 256, 32768];
const CASES_PER_MODE = 40;
const BASE_SEED = Number(Deno.env.get("IVSOCK_SEED") ?? 0x1f5c0c);

interface Case {
  seed: number;
  options: QueuePairOptions;
  payloadBytes: number;
}

function makeCase(mergeable: boolean, n: number): Case {
  const seed = (BASE_SEED + (mergeable ? 1000 : 0) + n) >>> 0;
  const rng = new Prng(seed);
  // Every queue size appears, 1 and 32768 included, then random ones.
  const queueSize = n < QUEUE_SIZES.length
    ? QUEUE_SIZES[n]!
    : rng.pick(QUEUE_SIZES);
  // Buffer sizes spread over orders of magnitude, both ends included.
  let bufferSize = n === 0
    ? 46
    : n === 1
    ? 65536
    : Math.round(Math.exp(rng.int(0, 1000) / 1000 * Math.log(65536 / 46)) * 46);
  // A single 46-byte mergeable buffer holds only a header: nothing could move.
  if (mergeable && queueSize === 1 && bufferSize <= MRG_HDR_LEN) {
    bufferSize = 47;
  }
  const payloadBytes = n === 2
    ? 0
    : n === 3
    ? 256 * 1024
    : rng.int(0, 256 * 1024);
  const options: QueuePairOptions = {
    queueSize,
    mergeable,
    bufferSize,
    eventIdx: rng.chance(0.5),
    splitHeader: rng.chance(0.3),
  };
  if (rng.chance(0.3) && bufferSize > 64 && queueSize >= 8) {
    options.descriptorBytes = rng.int(Math.ceil(bufferSize / 8), bufferSize);
  }
  return { seed, options, payloadBytes };
}

function runCase(c: Case): void {
  const rng = new Prng(c.seed ^ 0x5bd1e995);
  const data = rng.bytes(c.payloadBytes);
  const p = makeQueuePair(c.options);
  const label = `seed ${c.seed}: ${
    JSON.stringify(c.options)
  }, ${c.payloadBytes} bytes`;

  const up = driverToDevice(p, data, () => rng.int(0, MAX_PAYLOAD));
  assertEquals(
    up.received.length,
    data.length,
    `driver to device length, ${label}`,
  );
  assertEquals(up.received, data, `driver to device bytes, ${label}`);

  const down = deviceToDriver(p, data, () => rng.int(1, MAX_PAYLOAD));
  assertEquals(
    down.received.length,
    data.length,
    `device to driver length, ${label}`,
  );
  assertEquals(down.received, data, `device to driver bytes, ${label}`);

  assertEquals(p.deviceDrops, [], `device drops, ${label}`);
  assertEquals(p.driverErrors, [], `driver errors, ${label}`);
  assertEquals(p.deviceTxQ.broken ?? p.deviceRxQ.broken, null, label);
  assertEquals(p.driverTxQ.broken ?? p.driverRxQ.broken, null, label);
  if (!c.options.mergeable && c.payloadBytes > 0) {
    // Without the feature a packet never exceeds one buffer.
    const perPacket = Math.min(c.options.bufferSize - 44, MAX_PAYLOAD);
    assertEquals(
      down.packets >= Math.ceil(c.payloadBytes / perPacket),
      true,
      label,
    );
  }
}

for (const mergeable of [true, false]) {
  Deno.test(
    `driver and device move random payloads byte-for-byte both ways ${
      mergeable ? "with" : "without"
    } mergeable rx buffers`,
    () => {
      for (let n = 0; n < CASES_PER_MODE; n++) runCase(makeCase(mergeable, n));
    },
  );
}

Deno.test("a mergeable packet of 64 KiB crosses a queue of 32768 46-byte buffers", () => {
  const p = makeQueuePair({
    queueSize: 32768,
    mergeable: true,
    bufferSize: 46,
  });
  const data = new Prng(99).bytes(MAX_PAYLOAD);
  // room() would end the packet where a buffer ends (65,504 bytes); put()
  // takes the whole 64 KiB: the header's buffer and 1,425 of payload.
  assert(p.deviceRx.put(dataHeader(), data));
  const received = new Uint8Array(MAX_PAYLOAD);
  assert(p.driverRx.next(), "the driver takes the packet");
  assertEquals(p.driverRx.packet.copyPayload(received, 0), MAX_PAYLOAD);
  assertEquals(received, data);
  assertEquals(p.driverRx.next(), false, "one packet");
  assertEquals(p.driverErrors, []);
});
