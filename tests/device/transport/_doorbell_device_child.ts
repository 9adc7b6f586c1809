/**
 * Test and bench child: the device role as ivsock runs it in doorbell mode.
 * It creates the region, serves the ivshmem protocol on a socket (peer 0),
 * echoes packets, sleeps on the server's device eventfds and rings the
 * driver's client id (read from DRIVER_PEER) through the server.
 *
 * Prints `ready <generation>`; the server's `connect <id>`,
 * `disconnect <id>` and `log <message>`; `activated`; `deactivated
 * <reason>`. SIGUSR2 prints `stats rings=<n> changed=<n> timeout=<n>
 * poked=<n>`: rings the driver received, and why the device loop woke.
 * SIGTERM prints the stats and stops cleanly.
 *
 * Usage: _doorbell_device_child.ts shm=<path> notify=<doorbell|poll>
 *   [socket=<path>] [waker=<default|slow>] [heartbeat=<ms>] [timeout=<ms>]
 *
 * `notify=poll` serves no socket (ivshmem-plain: the driver maps `shm`).
 * `waker=slow` idles the waker's worker for 5 s between looks at the ring
 * words, with no spin or short phase, so only a doorbell (or the heartbeat
 * timer) wakes the device loop quickly.
 */

import { IvshmemServer } from "../../../device/notify/ivshmem_server.ts";
import { Waker, type WakeReason } from "../../../device/notify/waker.ts";
import type { Region } from "../../../device/shm/region.ts";
import { mapFile } from "../../../device/shm/shm_file.ts";
import { DeviceRunner } from "../../../device/transport/device_runner.ts";
import { DeviceTransport } from "../../../device/transport/device_transport.ts";
import { H } from "../../../device/transport/layout.ts";
import { DeviceEcho } from "../../_support/echo_ports.ts";

/** Two vectors: config and queues (DEVICE_VECTOR in layout.ts). */
const VECTORS = 2;
/** A region as large as the polling cross-process test uses. */
const REGION_SIZE = 4 << 20;
/** Long enough that a test notices any wake-up it did not cause. */
const SLOW_IDLE_MS = 5000;

/** A waker that counts why each wait ended. */
class CountingWaker extends Waker {
  readonly wakes: Record<WakeReason, number> = {
    changed: 0,
    poked: 0,
    timeout: 0,
  };

  constructor(region: Region, slow: boolean) {
    super(
      region,
      slow
        ? {
          spinMs: 0,
          shortSleepMs: SLOW_IDLE_MS,
          shortPhaseMs: 0,
          idleSleepMs: SLOW_IDLE_MS,
        }
        : {},
    );
  }

  override async wait(timeoutMs: number): Promise<WakeReason> {
    const reason = await super.wait(timeoutMs);
    this.wakes[reason]++;
    return reason;
  }
}

const args = Object.fromEntries(
  Deno.args.map((
    a,
  ) => [a.slice(0, a.indexOf("=")), a.slice(a.indexOf("=") + 1)]),
);
const doorbell = args.notify === "doorbell";
const mapping = mapFile(args.shm!, { mode: "create", size: REGION_SIZE });
const server = doorbell
  ? await IvshmemServer.listen({
    path: args.socket!,
    shmFd: mapping.fd,
    vectors: VECTORS,
    onEvent: (e) =>
      console.log(e.type === "log" ? `log ${e.message}` : `${e.type} ${e.id}`),
  })
  : undefined;
const transport = DeviceTransport.attach(mapping.region, {
  guestCid: 3,
  notifyMode: doorbell ? "doorbell" : "poll",
  driverTimeoutMs: Number(args.timeout ?? 3000),
});
const echo = new DeviceEcho();
const port = {
  activated: () => {
    echo.activated();
    console.log("activated");
  },
  deactivated: (reason: string) => {
    echo.deactivated(reason);
    console.log(`deactivated ${reason}`);
  },
  receive: echo.receive.bind(echo),
  transmit: echo.transmit.bind(echo),
};
const waker = new CountingWaker(mapping.region, args.waker === "slow");
let rings = 0;
const runner = new DeviceRunner(transport, port, {
  heartbeatMs: Number(args.heartbeat ?? 100),
  waker,
  // A slow waker's tests count what wakes the loop when it sleeps, so it
  // must not spin after each ping instead.
  ...(args.waker === "slow" ? { spinMs: 0 } : {}),
  ...(server === undefined ? {} : {
    doorbells: server.deviceVectors.map((e) => e.fd),
    // DRIVER_PEER is the driver's word: an id that is no client rings
    // nobody (ring() returns false).
    ringDriver: (v: number) => {
      if (server.ring(mapping.region.load32(H.DRIVER_PEER), v)) rings++;
    },
  }),
});
const done = runner.run();
console.log(`ready ${transport.generation}`);

function stats(): string {
  const w = waker.wakes;
  return `stats rings=${rings} changed=${w.changed} timeout=${w.timeout} poked=${w.poked}`;
}

Deno.addSignalListener("SIGUSR2", () => console.log(stats()));
Deno.addSignalListener("SIGTERM", async () => {
  await runner.stop();
  await done;
  const closing = waker.close();
  // The worker may sit in a 5 s poll() on the doorbells, which the waker's
  // stop flag does not interrupt; a ring ends it at once.
  server?.deviceVectors[0]?.signal();
  await closing;
  await server?.close();
  mapping.close();
  console.log(stats());
  Deno.exit(0);
});
