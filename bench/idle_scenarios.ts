/**
 * What an idle guest costs the host: the device process's CPU use (percent
 * of one core, every thread) over 5 s while a driver process is attached
 * and sends nothing, in polling mode (ivshmem-plain) and in doorbell mode
 * (the device serves the ivshmem protocol and the driver is a simulated
 * guest attached as its client). The baseline is an idle Deno process with
 * one 100 ms interval timer, about the least any Deno service costs.
 *
 * The processes are the doorbell transport test's children, so the bench
 * measures exactly what that test runs.
 *
 * @module
 */

import type { Scenario } from "./_harness.ts";
import { Child } from "../tests/_support/child.ts";

const DEVICE = new URL(
  "../tests/device/transport/_doorbell_device_child.ts",
  import.meta.url,
);
const DRIVER = new URL(
  "../tests/device/transport/_doorbell_driver_child.ts",
  import.meta.url,
);
const BASELINE = `data:text/javascript,${
  encodeURIComponent(
    "setInterval(() => {}, 100); console.log('ready');",
  )
}`;

/** The measured window. */
const WINDOW_MS = 5000;
/** Start-up work (module loading, negotiation, JIT) left out of the window. */
const SETTLE_MS = 1000;
/** Longest wait for a child to start, attach or answer. */
const STEP_MS = 20_000;
/** How long a child gets to stop on SIGTERM before it is killed. */
const STOP_MS = 3000;
/** Linux's USER_HZ, the unit of /proc/<pid>/stat times, on every ABI. */
const TICKS_PER_SECOND = 100;

/** The device process's idle CPU in both notification modes. */
export function idleScenarios(): Scenario[] {
  const unit = "% of a core";
  const baselineName = "idle Deno process, one 100 ms interval timer";
  return (["poll", "doorbell"] as const).map((mode) => ({
    name: `device process idle with a driver attached, ${
      mode === "poll" ? "polling" : "doorbell"
    } mode`,
    unit,
    rounds: 3,
    subject: () => idleDevice(mode),
    baselines: [{
      name: baselineName,
      run: idleBaseline,
      // The target is absolute: at most 2% of a core.
      target: { text: "idle CPU <= 2% of a core", met: (v: number) => v <= 2 },
    }],
  }));
}

/** CPU time of every thread of `pid` so far, in clock ticks. */
function cpuTicks(pid: number): number {
  // utime and stime are fields 14 and 15 of proc(5); they count every
  // thread, live or exited. Split after the command name, which may
  // contain spaces.
  const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return Number(fields[11]) + Number(fields[12]);
}

/** `pid`'s CPU use over the window, in percent of one core. */
async function measure(pid: number): Promise<number> {
  await sleep(SETTLE_MS);
  const ticks = cpuTicks(pid);
  const t0 = performance.now();
  await sleep(WINDOW_MS);
  const used = (cpuTicks(pid) - ticks) / TICKS_PER_SECOND;
  return (used / ((performance.now() - t0) / 1000)) * 100;
}

async function idleDevice(mode: "poll" | "doorbell"): Promise<number> {
  const tag = `${Deno.pid}-${mode}`;
  const shm = `/dev/shm/ivsock-bench-idle-${tag}`;
  const socket = `/tmp/ivsock-bench-idle-${tag}.sock`;
  const children: Child[] = [];
  try {
    const device = new Child("device", DEVICE, [
      `shm=${shm}`,
      `socket=${socket}`,
      `notify=${mode}`,
    ]);
    children.push(device);
    await device.waitFor((l) => l.startsWith("ready"), STEP_MS);
    const driver = new Child("driver", DRIVER, [
      mode === "poll" ? `shm=${shm}` : `socket=${socket}`,
      "mode=idle",
    ]);
    children.push(driver);
    await device.waitFor((l) => l === "activated", STEP_MS);
    const before = await wakeCounts(device);
    const percent = await measure(device.process.pid);
    const after = await wakeCounts(device);
    console.log(
      `  ${mode}: ${
        percent.toFixed(2)
      }% of a core; device loop wakes in the window: ${
        describeWakes(before, after)
      }`,
    );
    return percent;
  } finally {
    for (const c of children.reverse()) await stop(c);
    for (const path of [shm, socket]) await Deno.remove(path).catch(() => {});
  }
}

async function idleBaseline(): Promise<number> {
  const child = new Child("baseline", BASELINE, []);
  try {
    await child.waitFor((l) => l === "ready", STEP_MS);
    return await measure(child.process.pid);
  } finally {
    await stop(child);
  }
}

/**
 * The device child's counts of why its loop woke (SIGUSR2 asks for them),
 * or null when it does not answer: a loop that never awaits starves the
 * event loop, signals included.
 */
async function wakeCounts(
  device: Child,
): Promise<Record<string, number> | null> {
  const mark = device.lines.length;
  device.process.kill("SIGUSR2");
  try {
    const line = await device.waitFor(
      (l) => l.startsWith("stats "),
      STOP_MS,
      mark,
    );
    return Object.fromEntries(
      line.slice(6).split(" ").map((kv) => {
        const [k, v] = kv.split("=");
        return [k!, Number(v)];
      }),
    );
  } catch {
    return null;
  }
}

function describeWakes(
  before: Record<string, number> | null,
  after: Record<string, number> | null,
): string {
  if (before === null || after === null) {
    return "unknown (the device did not answer SIGUSR2: its event loop is starved)";
  }
  return ["changed", "timeout", "poked", "rings"]
    .map((k) => `${k}=${(after[k] ?? 0) - (before[k] ?? 0)}`)
    .join(" ");
}

/** SIGTERM, then SIGKILL if the child has not exited within STOP_MS. */
async function stop(child: Child): Promise<void> {
  try {
    child.process.kill("SIGTERM");
    await child.exited(STOP_MS);
  } catch {
    await child.stop("SIGKILL");
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
