/**
 * How often the sidecar's device beats: every 250 ms by default, which the
 * guest's fixed 3 s timeout judges, but at a quarter of a short
 * `driverTimeoutMs`, because the idle loop checks the guest's heartbeat only
 * when it beats (docs/transport.md, section 4.9).
 *
 * Counting beats over a window is exact in one direction only: a loop that
 * beats when `heartbeatMs` has passed never beats more than once per
 * period, however late its timers fire. So each period is checked by that
 * upper bound, and by a lower bound with room for late timers that still
 * rules out the neighbouring mistakes (250 ms beating as 750 ms, a short
 * period beating like the default).
 */
import "../_support/ffi.ts";
import { assert } from "../../dev_deps.ts";
import { parseConfig } from "../../config/load.ts";
import { Sidecar } from "../../proxy/sidecar.ts";
import { H } from "../../device/transport/layout.ts";

const WINDOW_MS = 2000;

async function beatsIn(driverTimeoutMs?: number): Promise<number> {
  const region = `/dev/shm/ivsock-test-heartbeat-${Deno.pid}`;
  const config = parseConfig({
    device: {
      region,
      size: "256KiB",
      ...(driverTimeoutMs === undefined ? {} : { driverTimeoutMs }),
    },
    routes: [],
    admin: false,
  });
  const sidecar = await Sidecar.start(config, () => {});
  try {
    const r = sidecar.transport.region;
    const before = r.load32(H.DEVICE_HEARTBEAT);
    await new Promise((resolve) => setTimeout(resolve, WINDOW_MS));
    return (r.load32(H.DEVICE_HEARTBEAT) - before) >>> 0;
  } finally {
    await sidecar.stop(0);
  }
}

Deno.test("the sidecar's device beats every 250 ms by default: 5 to 9 beats in two seconds", async () => {
  const beats = await beatsIn();
  assert(beats <= 1 + WINDOW_MS / 250, `${beats} beats in ${WINDOW_MS} ms`);
  // Every 750 ms (a timeout's quarter without the cap) would give at most 3.
  assert(beats >= 5, `${beats} beats in ${WINDOW_MS} ms`);
});

Deno.test("with a 200 ms driver timeout the sidecar beats every 50 ms: more beats in two seconds than 250 ms could give, and no more than 50 ms allows", async () => {
  const beats = await beatsIn(200);
  const text = `${beats} beats in ${WINDOW_MS} ms (expected about ${
    WINDOW_MS / 50
  })`;
  assert(beats > 1 + WINDOW_MS / 250, text);
  assert(beats <= 1 + WINDOW_MS / 50, text);
});
