/**
 * What an idle guest costs the host: the sidecar's CPU use (percent of one
 * core, every thread) over 5 s while the guest agent is attached, has
 * answered one connection through a route, and then sends nothing, in
 * polling mode (ivshmem-plain) and in doorbell mode (the sidecar serves the
 * ivshmem protocol and the agent attaches as QEMU would). The processes are
 * the real ones, `mod.ts serve` and the agent, as every path scenario runs
 * them. The baseline is an idle Deno process with one 100 ms interval
 * timer, about the least any Deno service costs.
 *
 * CPU comes from each thread's `/proc/<pid>/task/<tid>/schedstat`
 * (nanoseconds on the CPU), not from the 10 ms ticks of `/proc/<pid>/stat`,
 * which over a 5 s window move in steps of 0.2% of a core. Each round also
 * prints the sidecar's threads, so a change in the figure shows where. A
 * kernel without schedstat (CONFIG_SCHED_INFO off) gets the ticks.
 *
 * @module
 */

import type { Scenario } from "./_harness.ts";
import { connectRate } from "./_clients.ts";
import { GuestServer } from "./_stack.ts";
import { Child } from "../tests/_support/child.ts";
import { exists } from "../tests/_support/exists.ts";

const BASELINE = `data:text/javascript,${
  encodeURIComponent(
    "setInterval(() => {}, 100); console.log('ready');",
  )
}`;

/** The measured window. */
const WINDOW_MS = 5000;
/**
 * Quiet before the window: longer than the loops' spin and their wakers'
 * short-poll phase after the last connection (device/notify/waker.ts).
 */
const SETTLE_MS = 1000;
/** Whether this kernel keeps per-thread schedstat. */
const HAS_SCHEDSTAT = exists("/proc/self/schedstat");
/** Linux's USER_HZ, the unit of /proc/<pid>/stat times, on every ABI. */
const TICKS_PER_SECOND = 100;
/** Longest wait for the baseline child to start. */
const STEP_MS = 20_000;
/** How long the baseline child gets to stop on SIGTERM before it is killed. */
const STOP_MS = 3000;

/** The sidecar's idle CPU in both notification modes. */
export function idleScenarios(): Scenario[] {
  return ([false, true] as const).map((doorbell) => {
    const mode = doorbell ? "doorbell" : "polling";
    let rig: GuestServer;
    return {
      name: `sidecar idle with the guest agent attached, ${mode} mode`,
      unit: "% of a core",
      rounds: 3,
      async setup() {
        rig = await GuestServer.start("echo", 7, { doorbell });
        // One connection and a 1-byte echo: the agent is attached and serving.
        await connectRate(rig.port, 1, 1);
      },
      teardown: () => rig?.stop(),
      async subject() {
        const { percent, threads } = await measure(
          rig.stack.sidecar.process.pid,
        );
        console.error(
          `  ${mode}: ${percent.toFixed(2)}% of a core (${threads})`,
        );
        return percent;
      },
      baselines: [{
        name: "idle Deno process, one 100 ms interval timer",
        run: idleBaseline,
        // The target is absolute: at most 2% of a core.
        target: {
          text: "idle CPU <= 2% of a core",
          met: (v: number) => v <= 2,
        },
      }],
    };
  });
}

/**
 * Nanoseconds on the CPU so far of each live thread of `pid`, by name; or,
 * without schedstat, of the whole process (every thread, live or exited)
 * in 10 ms ticks, under the name "all threads".
 */
function threadTimes(pid: number): Map<string, number> {
  const out = new Map<string, number>();
  if (!HAS_SCHEDSTAT) {
    // utime and stime are fields 14 and 15 of proc(5). Split after the
    // command name, which may contain spaces.
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const ticks = Number(f[11]) + Number(f[12]);
    out.set("all threads 0", (ticks / TICKS_PER_SECOND) * 1e9);
    return out;
  }
  for (const task of Deno.readDirSync(`/proc/${pid}/task`)) {
    const dir = `/proc/${pid}/task/${task.name}`;
    try {
      const name = Deno.readTextFileSync(`${dir}/comm`).trim();
      const ns = Number(
        Deno.readTextFileSync(`${dir}/schedstat`).split(" ")[0],
      );
      out.set(`${name} ${task.name}`, ns);
    } catch {
      // The thread exited between the listing and the read.
    }
  }
  return out;
}

/**
 * `pid`'s CPU use over the window, in percent of one core, and a summary
 * of the threads that used any. A thread that starts or ends within the
 * window counts for the part it was seen in.
 */
async function measure(
  pid: number,
): Promise<{ percent: number; threads: string }> {
  await sleep(SETTLE_MS);
  const before = threadTimes(pid);
  const t0 = performance.now();
  await sleep(WINDOW_MS);
  const after = threadTimes(pid);
  const seconds = (performance.now() - t0) / 1000;
  const byName = new Map<string, number>();
  let total = 0;
  for (const [key, ns] of after) {
    const used = ns - (before.get(key) ?? 0);
    total += used;
    const name = key.slice(0, key.lastIndexOf(" "));
    byName.set(name, (byName.get(name) ?? 0) + used);
  }
  const share = (ns: number) => (ns / 1e9 / seconds) * 100;
  const threads = [...byName]
    .filter(([, ns]) => share(ns) >= 0.01)
    .sort((a, b) => b[1] - a[1])
    .map(([name, ns]) => `${name} ${share(ns).toFixed(2)}%`)
    .join(", ");
  return { percent: share(total), threads };
}

async function idleBaseline(): Promise<number> {
  const child = new Child("baseline", BASELINE, []);
  try {
    await child.waitFor((l) => l === "ready", STEP_MS);
    return (await measure(child.process.pid)).percent;
  } finally {
    try {
      child.process.kill("SIGTERM");
      await child.exited(STOP_MS);
    } catch {
      await child.stop("SIGKILL");
    }
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
