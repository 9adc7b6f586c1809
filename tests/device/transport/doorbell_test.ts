/**
 * Doorbell mode across processes: the device process serves the ivshmem
 * protocol and sleeps on its peer-0 eventfds; the driver process attaches
 * as a simulated guest (an ivshmem client, as QEMU would be), maps the
 * memory it is handed and sleeps on its own eventfds. Each rings the other
 * through the eventfds the server handed out.
 */
import { assert, assertEquals } from "../../../dev_deps.ts";
import { Child } from "../../_support/child.ts";

const DEVICE = new URL("./_doorbell_device_child.ts", import.meta.url);
const DRIVER = new URL("./_doorbell_driver_child.ts", import.meta.url);
const STEP_MS = 20_000;
/**
 * Most CPU an idle device process may use. Measured ~2% (a 10 ms waker
 * poll and a 100 ms heartbeat); a device loop that spins shows ~100%.
 */
const IDLE_LIMIT_PERCENT = 10;
/** How long a child may take to answer a signal. */
const ANSWER_MS = 5000;

function progress(line: string): number {
  return line.startsWith("progress ") ? Number(line.slice(9)) : -1;
}

/** `stats a=1 b=2` as `{a: 1, b: 2}`. */
function parseStats(line: string): Record<string, number> {
  return Object.fromEntries(
    line.slice("stats ".length).split(" ").map((kv) => {
      const [k, v] = kv.split("=");
      return [k!, Number(v)];
    }),
  );
}

/** `ping done n=200 median=0.8 max=3.1 ok` as numbers and a verdict. */
function parsePing(line: string): { median: number; max: number; ok: boolean } {
  const field = (name: string) => Number(line.match(`${name}=([\\d.]+)`)![1]);
  return {
    median: field("median"),
    max: field("max"),
    ok: line.endsWith(" ok"),
  };
}

/** CPU time of every thread of `pid` so far, in clock ticks. */
function cpuTicks(pid: number): number {
  // Fields after the parenthesised command name, which may hold spaces;
  // utime and stime are fields 14 and 15 of proc(5).
  const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return Number(fields[11]) + Number(fields[12]);
}

/** Linux's USER_HZ, the unit of /proc/<pid>/stat times, on every ABI. */
const TICKS_PER_SECOND = 100;

/** Children and files of one test; dispose to kill and remove them all. */
class Rig implements AsyncDisposable {
  readonly shm: string;
  readonly socket: string;
  readonly children: Child[] = [];

  constructor(name: string) {
    this.shm = `/dev/shm/ivsock-test-doorbell-${name}-${Deno.pid}`;
    this.socket = `/tmp/ivsock-test-doorbell-${name}-${Deno.pid}.sock`;
  }

  async device(...args: string[]): Promise<Child> {
    const c = this.#spawn("device", DEVICE, [
      `shm=${this.shm}`,
      `socket=${this.socket}`,
      ...args,
    ]);
    await c.waitFor((l) => l.startsWith("ready"), STEP_MS);
    return c;
  }

  driver(...args: string[]): Child {
    return this.#spawn("driver", DRIVER, args);
  }

  /** Asks a child for its `stats` line (SIGUSR2) and parses it. */
  async stats(child: Child): Promise<Record<string, number>> {
    const mark = child.lines.length;
    child.process.kill("SIGUSR2");
    try {
      return parseStats(
        await child.waitFor((l) => l.startsWith("stats "), ANSWER_MS, mark),
      );
    } catch (err) {
      throw new Error(
        `${child.name} did not answer SIGUSR2 within ${ANSWER_MS} ms: a runner that never awaits starves the event loop`,
        { cause: err },
      );
    }
  }

  /** SIGTERM, then the exit status within ANSWER_MS (rejects otherwise). */
  async terminate(child: Child): Promise<Deno.CommandStatus> {
    child.process.kill("SIGTERM");
    return await child.exited(ANSWER_MS);
  }

  #spawn(name: string, script: URL, args: string[]): Child {
    const c = new Child(name, script, args);
    this.children.push(c);
    return c;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    for (const c of this.children) await c.stop("SIGKILL");
    for (const path of [this.shm, this.socket]) {
      await Deno.remove(path).catch(() => {});
    }
  }
}

Deno.test({
  name:
    "A device process and an ivshmem-client driver process move a checksummed stream both ways, each ringing the other, and a killed driver's successor attaches with a new id",
  async fn() {
    await using rig = new Rig("stream");
    const device = await rig.device(
      "notify=doorbell",
      "heartbeat=50",
      "timeout=400",
    );
    const driver = rig.driver(
      `socket=${rig.socket}`,
      "mode=stream",
      `n=${64 << 20}`,
      "timeout=400",
    );
    assertEquals(
      await driver.waitFor((l) => l.startsWith("id "), STEP_MS),
      "id 1",
    );
    await device.waitFor((l) => l === "connect 1", STEP_MS);
    await driver.waitFor((l) => progress(l) >= 4 << 20, STEP_MS);

    // Signals on the client's vectors (the device rang the driver) and on
    // the device's vectors (the driver rang peer 0).
    const deviceStats = await rig.stats(device);
    const driverStats = await rig.stats(driver);
    assert(
      deviceStats.rings! > 0,
      `device rang the driver: ${JSON.stringify(deviceStats)}`,
    );
    assert(deviceStats.changed! > 0, "the device's waker woke it");
    assert(
      driverStats.rings! > 0,
      `driver rang the device: ${JSON.stringify(driverStats)}`,
    );

    // Kill the driver mid-stream: the server sees it go, the device drops
    // its queues, and a new client gets the next id and a fresh session.
    await driver.stop("SIGKILL");
    await device.waitFor((l) => l === "disconnect 1", STEP_MS);
    await device.waitFor(
      (l) => l.startsWith("deactivated guest driver stopped responding"),
      STEP_MS,
    );
    const mark = device.lines.length;
    const driver2 = rig.driver(
      `socket=${rig.socket}`,
      "mode=stream",
      `n=${8 << 20}`,
      "timeout=400",
    );
    assertEquals(
      await driver2.waitFor((l) => l.startsWith("id "), STEP_MS),
      "id 2",
    );
    assertEquals(
      await driver2.waitFor((l) => l.startsWith("done"), STEP_MS),
      "done ok",
    );
    await device.waitFor((l) => l === "connect 2", STEP_MS, mark);
    assert(
      device.lines.slice(mark).includes("activated"),
      "the same device took the new driver",
    );
    const after = await rig.stats(device);
    assert(after.rings! > deviceStats.rings!, "the device rang the new driver");
  },
});

Deno.test({
  name:
    "Doorbells wake a device whose waker idles for 5 s: 200 checksummed pings each come back well within its 500 ms heartbeat",
  async fn() {
    await using rig = new Rig("ping");
    const device = await rig.device(
      "notify=doorbell",
      "waker=slow",
      "heartbeat=500",
    );
    const n = 200;
    const driver = rig.driver(`socket=${rig.socket}`, "mode=ping", `n=${n}`);
    const ping = parsePing(
      await driver.waitFor((l) => l.startsWith("ping done"), STEP_MS),
    );
    assert(ping.ok, "every echo matched its ping");
    assert(
      ping.median < 50,
      `median round trip ${ping.median} ms is far below the 500 ms heartbeat`,
    );
    const deviceStats = await rig.stats(device);
    const driverStats = await rig.stats(driver);
    // Only an eventfd cuts the waker's 5 s poll short, so each ping that
    // came back before the heartbeat woke the device through a doorbell.
    assert(
      deviceStats.changed! >= n * 0.9,
      `the waker woke the device for (nearly) every ping: ${
        JSON.stringify(deviceStats)
      }`,
    );
    assert(
      driverStats.rings! >= n * 0.9,
      `the driver rang for (nearly) every ping: ${JSON.stringify(driverStats)}`,
    );
    assert(deviceStats.rings! > 0, "the device rang the driver");
    assertEquals((await rig.terminate(driver)).code, 0);
    assertEquals((await rig.terminate(device)).code, 0);
  },
});

Deno.test({
  name:
    "Without doorbells the same slow waker leaves each ping waiting for the device's heartbeat",
  async fn() {
    // The control for the test above: polling mode, nothing rings, so
    // only the 500 ms heartbeat timer wakes the device loop.
    await using rig = new Rig("ping-poll");
    await rig.device("notify=poll", "waker=slow", "heartbeat=500");
    const driver = rig.driver(`shm=${rig.shm}`, "mode=ping", "n=3");
    const ping = parsePing(
      await driver.waitFor((l) => l.startsWith("ping done"), STEP_MS),
    );
    assert(ping.ok);
    assert(ping.median > 250, `median round trip ${ping.median} ms`);
  },
});

Deno.test({
  name:
    "A device process in doorbell mode sleeps while its driver is idle, and still answers signals",
  async fn() {
    await using rig = new Rig("idle");
    const device = await rig.device("notify=doorbell");
    const driver = rig.driver(`socket=${rig.socket}`, "mode=idle");
    await device.waitFor((l) => l === "activated", STEP_MS);
    await new Promise((r) => setTimeout(r, 300));
    const pid = device.process.pid;
    const before = cpuTicks(pid);
    const t0 = performance.now();
    await new Promise((r) => setTimeout(r, 2000));
    const percent = (cpuTicks(pid) - before) / TICKS_PER_SECOND /
      ((performance.now() - t0) / 1000) * 100;
    assert(
      percent < IDLE_LIMIT_PERCENT,
      `an idle device process uses ${percent.toFixed(0)}% of a core`,
    );
    await rig.stats(device);
    assertEquals((await rig.terminate(driver)).code, 0);
    assertEquals((await rig.terminate(device)).code, 0);
  },
});
