/**
 * The hostile-guest fuzzer: one seeded run of the real device against a
 * guest that is part well-behaved driver, part attacker.
 *
 * Each iteration draws one action from a generator seeded by (seed,
 * iteration), performs it between the runners' turns, lets both loops run,
 * and checks the invariants:
 *
 * - the device never throws out of its loop (`device loop error`, and the
 *   `internal error` reset it causes, are failures);
 * - it never attempts an access outside the region (no `RegionAccessError`
 *   in its instrumented view), and writes only its header words, its live
 *   used rings and its accepted pool;
 * - packet-level and chain-level hostility (class A) disturb nothing: no
 *   transport reset, no good connection failing, no complaint from the
 *   well-behaved driver, and exactly the spoiled chains dropped;
 * - after ring- and transport-level hostility (class B, an "episode"), which
 *   may reset the transport and end good connections, the transport comes
 *   back and a new connection works, within a deadline;
 * - memory stays bounded: engine tables, pending replies and held rx chains
 *   under fixed limits, and the heap after garbage collection under a fixed
 *   growth limit past warm-up.
 *
 * The run stops at the first failure and says how to run it again.
 *
 * @module
 */

import { setImmediate } from "node:timers";
import v8 from "node:v8";
import vm from "node:vm";
import {
  MAX_PENDING_REPLIES,
  maxQueuedPackets,
} from "../../device/vsock/constants.ts";
import { TYPE } from "../../device/packets/header.ts";
import { AVAIL_IDX } from "../../device/virtqueue/split_ring.ts";
import type { DriverTransportOptions } from "../../device/transport/driver_transport.ts";
import { Prng } from "../_support/prng.ts";
import type { AccessReport } from "./instrumented_region.ts";
import { checkAccepted } from "./config_oracle.ts";
import { DropLedger } from "./drop_ledger.ts";
import { FuzzRig } from "./fuzz_rig.ts";
import { type GoodLedger, GoodTraffic } from "./good_traffic.ts";
import { HostileChains } from "./hostile_chains.ts";
import { HostSinks, SINK_SEQ_PORT } from "./host_sinks.ts";
import { HostilePackets, isHostilePort } from "./hostile_packets.ts";
import { HostileTransport } from "./hostile_transport.ts";
import { HostileTx } from "./hostile_tx.ts";

/** Settings of one run. */
export interface FuzzOptions {
  seed: number;
  iterations: number;
  /**
   * First iteration number. Iteration `i` draws from a generator seeded by
   * (seed, i), so `start` replays a window of a longer run on a fresh rig.
   * @default {0}
   */
  start?: number;
  /** Progress and result lines. @default {no output} */
  log?: (line: string) => void;
  /** Print progress every this many iterations. @default {5000} */
  progressEvery?: number;
  /**
   * Every this many iterations the guest restarts its driver with other
   * settings (queue size, receive buffer size, MRG_RXBUF, EVENT_IDX).
   * @default {2500}
   */
  segment?: number;
  /** Heap growth allowed past warm-up, after GC. @default {64 MiB} */
  heapGrowthLimit?: number;
}

/** The first broken invariant. */
export interface FuzzFailure {
  iteration: number;
  action: string;
  message: string;
  /** The last log lines of the device and the driver. */
  context: string[];
}

/** What a run did and saw. */
export interface FuzzReport {
  seed: number;
  start: number;
  /** Iterations completed. */
  iterations: number;
  elapsedMs: number;
  actions: Record<string, number>;
  episodes: number;
  recoveryMs: { mean: number; max: number };
  good: GoodLedger;
  device: AccessReport & { logErrors: string[] };
  limits: {
    maxHostConnections: number;
    maxGuestConnections: number;
    maxPendingReplies: number;
    maxHeldRx: number;
  };
  memory: {
    baselineHeap: number;
    peakHeap: number;
    finalHeap: number;
    samples: number;
  };
  hostile: Record<string, unknown>;
  failure: FuzzFailure | null;
  /** How to run the failing iteration again. */
  rerun: string | null;
}

/** Limits the engines must stay under. */
const MAX_CONNECTIONS_SEEN = 512;
/** How long the transport may take to come back after an episode. */
const RECOVERY_MS = 5000;
/** How long a fresh connection may take after an episode. */
const PROBE_MS = 3000;
const REGION_SIZE = 1 << 20;

type ActionClass = "A" | "B";

/** Runs the fuzzer; resolves with the report (never rejects for a failure). */
export async function runFuzz(options: FuzzOptions): Promise<FuzzReport> {
  const seed = options.seed >>> 0;
  const start = options.start ?? 0;
  const end = start + options.iterations;
  const log = options.log ?? (() => {});
  const progressEvery = options.progressEvery ?? 5000;
  const segment = options.segment ?? 2500;
  const heapGrowthLimit = options.heapGrowthLimit ?? 64 << 20;
  const gc = exposeGc();
  const began = performance.now();

  const rig = new FuzzRig({
    regionSize: REGION_SIZE,
    driver: driverSettings(seed, Math.floor(start / segment)),
  });
  const clock = { episode: 0, inEpisode: false };
  const good = new GoodTraffic(rig.host, rig.guest, clock, seed);
  const sinks = new HostSinks(rig.host);
  const packets = new HostilePackets();
  const chains = new HostileChains();
  const transport = new HostileTransport(rig);
  const txDrops = new DropLedger();
  const rxDrops = new DropLedger();
  rig.driverPort.isHostile = isHostilePort;
  rig.driverPort.hostile = (p) => packets.hear(p);

  const actions: Record<string, number> = {};
  const actionMs: Record<string, number> = {};
  const recoveries: number[] = [];
  const limits = {
    maxHostConnections: 0,
    maxGuestConnections: 0,
    maxPendingReplies: 0,
    maxHeldRx: 0,
  };
  const heap: number[] = [];
  let baselineHeap = 0;
  let failure: FuzzFailure | null = null;
  let iteration = start;
  let action = "start";
  let stopping = false;

  const fail = (message: string) => {
    if (failure !== null) return;
    failure = {
      iteration,
      action,
      message,
      context: [
        ...rig.deviceLog.recent().slice(-8).map((l) =>
          `device ${l.level}: ${l.message}`
        ),
        ...rig.driverLog.recent().slice(-8).map((l) =>
          `driver ${l.level}: ${l.message}`
        ),
      ],
    };
  };

  // Whatever the device accepts must pass an independent reading of the
  // rules (docs/transport.md, section 4.5).
  rig.devicePort.onActivated = (queues, pool) => {
    const wrong = checkAccepted(
      queues,
      pool,
      rig.region.size,
      rig.device.maxQueueSize,
    );
    if (wrong !== null) {
      fail(`the device accepted a bad configuration: ${wrong}`);
    }
  };
  // Class A must not bring the transport down, from either side.
  rig.devicePort.onDeactivated = (reason) => {
    if (!clock.inEpisode && !stopping) {
      fail(`the device dropped the transport outside an episode: ${reason}`);
    }
  };
  rig.driverPort.onDeactivated = (reason) => {
    if (!clock.inEpisode && !stopping) {
      fail(`the driver lost the transport outside an episode: ${reason}`);
    }
  };
  // The well-behaved driver may only complain about receive buffers the
  // actor spoiled, which come back unused.
  rig.driverLog.listen((line) => {
    if (clock.inEpisode || stopping || line.level !== "warn") return;
    if (
      /used length 0 is shorter than the \d+-byte header/.test(line.message)
    ) {
      return;
    }
    fail(
      `the well-behaved driver complained outside an episode: ${line.message}`,
    );
  });
  rig.deviceLog.listen((line) => {
    if (line.level === "error") fail(`device logged an error: ${line.message}`);
  });
  const onRejection = (e: PromiseRejectionEvent) => {
    e.preventDefault();
    fail(`unhandled rejection: ${errorText(e.reason)}`);
  };
  globalThis.addEventListener("unhandledrejection", onRejection);

  /** Lets both loops take a few turns. */
  const settle = async (turns: number) => {
    rig.kick();
    for (let t = 0; t < turns; t++) await immediate();
  };

  /** A transport-level action, then recovery and a fresh connection. */
  const episode = async (
    fn: () => Promise<boolean | void> | boolean | void,
  ) => {
    clock.episode++;
    clock.inEpisode = true;
    const t0 = performance.now();
    const runs = await fn();
    // The device runs whatever the actor set up for a few turns, and both
    // sides get the chance to notice on their own first.
    for (let t = 0; t < 4; t++) {
      if (runs === true) transport.garbage(new Prng(seed ^ iteration ^ t));
      await settle(2);
    }
    transport.forceReset();
    rig.kick();
    if (!await rig.waitUp(RECOVERY_MS)) {
      fail(
        `the transport did not come back within ${RECOVERY_MS} ms: device ${rig.device.state} (${rig.device.reason}), driver ${
          rig.queues === null ? "negotiating" : "running"
        }`,
      );
      return;
    }
    packets.reset();
    txDrops.clear();
    rxDrops.clear();
    clock.inEpisode = false;
    const probe = await good.probe(PROBE_MS);
    if (probe !== null) {
      fail(`a new connection failed after the transport came back: ${probe}`);
    }
    recoveries.push(performance.now() - t0);
  };

  const checks = () => {
    const access = rig.deviceRegion.report();
    if (access.accessErrors > 0 || access.violationCount > 0) {
      fail(
        `device memory access out of bounds or out of scope: ${
          access.violations.join("; ")
        }`,
      );
    }
    for (const f of good.ledger.failures) fail(f);
    const q = rig.device.queues;
    if (!clock.inEpisode && q !== null && rig.queues !== null) {
      txDrops.track(q.tx);
      rxDrops.track(q.rx);
      const wrong = txDrops.check() ?? rxDrops.check();
      if (wrong !== null) fail(wrong);
    }
    // A flood of tiny messages at a host application that does not read
    // must end in a reset once the device has taken more than the limit;
    // a one-byte STREAM flood within credit must not.
    const f = packets.flood;
    const dq = rig.device.queues;
    const gq = rig.queues;
    if (
      !clock.inEpisode && f !== null && f.type === TYPE.SEQPACKET &&
      dq !== null &&
      gq !== null && f.sent > maxQueuedPackets(rig.host.initialBufAlloc) + 1 &&
      dq.tx.lastAvail === rig.region.load16(gq.tx.layout.avail + AVAIL_IDX)
    ) {
      const c = sinks.find(SINK_SEQ_PORT, f.port);
      if (c?.state === "established") {
        fail(
          `the host holds ${f.sent} unread tiny SEQPACKET messages from one peer without resetting it`,
        );
      }
    }
    if (packets.stats.streamFloodResets > 0) {
      fail(
        "the host reset a peer sending one-byte STREAM packets within its credit",
      );
    }
    limits.maxHostConnections = Math.max(
      limits.maxHostConnections,
      rig.host.connectionCount,
    );
    limits.maxGuestConnections = Math.max(
      limits.maxGuestConnections,
      rig.guest.connectionCount,
    );
    limits.maxPendingReplies = Math.max(
      limits.maxPendingReplies,
      rig.host.pendingReplies,
    );
    if (q !== null) {
      limits.maxHeldRx = Math.max(limits.maxHeldRx, q.deviceRx.held);
      if (q.deviceRx.held > q.rx.layout.size) {
        fail(
          `device holds ${q.deviceRx.held} rx chains, more than the queue size`,
        );
      }
    }
    if (rig.host.connectionCount > MAX_CONNECTIONS_SEEN) {
      fail(`host engine holds ${rig.host.connectionCount} connections`);
    }
    if (rig.host.pendingReplies > MAX_PENDING_REPLIES) {
      fail(`host engine holds ${rig.host.pendingReplies} pending replies`);
    }
  };

  const sampleHeap = () => {
    gc();
    const used = Deno.memoryUsage().heapUsed;
    heap.push(used);
    return used;
  };

  try {
    if (!await rig.waitUp(RECOVERY_MS)) {
      fail("the transport did not come up at the start");
    }
    const warmUp = start + Math.min(2000, Math.floor(options.iterations / 5));
    const heapEvery = Math.max(100, Math.floor(options.iterations / 40));
    for (; iteration < end && failure === null; iteration++) {
      if (iteration > start && iteration % segment === 0) {
        action = "B driver restart";
        actions[action] = (actions[action] ?? 0) + 1;
        const settings = driverSettings(seed, iteration / segment);
        await episode(() => rig.restartDriver(settings));
        if (failure !== null) break;
      }
      if (!rig.up && !await rig.waitUp(RECOVERY_MS)) {
        fail("the transport was down at the start of an iteration");
        break;
      }
      good.topUp();
      const rng = new Prng(iterationSeed(seed, iteration));
      const [cls, name] = pickAction(rng);
      action = `${cls} ${name}`;
      actions[action] = (actions[action] ?? 0) + 1;
      const t0 = performance.now();
      try {
        if (cls === "B") {
          await episode(() => actB(name, rng));
        } else if (name === "flood") {
          // Several rounds, each as much as the tx queue holds, so a flood
          // can pass the host's packet limit between two episodes.
          for (
            let round = rng.int(1, 8);
            round > 0 && rig.queues !== null;
            round--
          ) {
            const tx = new HostileTx(rig.region, rig.queues);
            packets.floodSink(rng, tx);
            tx.publish();
            await settle(2);
          }
        } else {
          actA(name, rng);
          await settle(rng.int(1, 2));
        }
      } catch (err) {
        fail(
          `threw: ${err instanceof Error ? err.stack ?? err.message : err}`,
        );
      }
      actionMs[action] = (actionMs[action] ?? 0) + performance.now() - t0;
      checks();
      if (iteration % 25 === 0) good.checkStalls();
      if (iteration === warmUp) baselineHeap = sampleHeap();
      else if (iteration > warmUp && iteration % heapEvery === 0) {
        const used = sampleHeap();
        if (baselineHeap > 0 && used - baselineHeap > heapGrowthLimit) {
          fail(
            `heap grew by ${
              mib(used - baselineHeap)
            } MiB after warm-up (limit ${mib(heapGrowthLimit)} MiB)`,
          );
        }
      }
      if ((iteration + 1 - start) % progressEvery === 0) {
        log(
          `iteration ${iteration + 1}/${end}: ${
            Math.round(performance.now() - began)
          } ms, ${good.ledger.completed} good connections completed, ${clock.episode} episodes, heap ${
            mib(heap.at(-1) ?? 0)
          } MiB`,
        );
      }
    }
    // Let the good connections finish: they must, outside an episode.
    if (failure === null && !await good.drain(20_000)) {
      fail(`${good.live} good connections did not finish within 20 s`);
    }
    checks();
  } finally {
    stopping = true;
    await rig.stop();
    await good.stop();
    await sinks.stop();
    globalThis.removeEventListener("unhandledrejection", onRejection);
  }
  const finalHeap = sampleHeap();
  const access = rig.deviceRegion.report();
  const done = (failure as FuzzFailure | null) === null
    ? end - start
    : (failure as unknown as FuzzFailure).iteration - start;
  const report: FuzzReport = {
    seed,
    start,
    iterations: done,
    elapsedMs: Math.round(performance.now() - began),
    actions,
    episodes: clock.episode,
    recoveryMs: {
      mean: round(
        recoveries.reduce((a, b) => a + b, 0) / (recoveries.length || 1),
      ),
      max: round(Math.max(0, ...recoveries)),
    },
    good: good.ledger,
    device: { ...access, logErrors: rig.deviceLog.errors },
    limits,
    memory: {
      baselineHeap,
      peakHeap: Math.max(0, ...heap),
      finalHeap,
      samples: heap.length,
    },
    hostile: {
      actionMs: Object.fromEntries(
        Object.entries(actionMs).map(([k, v]) => [k, Math.round(v)]),
      ),
      packets: packets.stats,
      chains: chains.stats,
      takeovers: transport.outcomes,
      deviceRings: rig.rings,
      deviceTxDropped: rig.device.queues?.tx.stats.dropped ?? null,
    },
    failure,
    rerun: failure === null ? null : rerunHint(seed, failure),
  };
  return report;

  function actA(name: string, rng: Prng): void {
    const q = rig.queues;
    if (q === null) return;
    const device = rig.device.queues;
    switch (name) {
      case "packets": {
        const tx = new HostileTx(rig.region, q);
        packets.act(rng, tx, rig.guest);
        tx.publish();
        return;
      }
      case "chains": {
        const tx = new HostileTx(rig.region, q);
        const drops = chains.spoilTx(rng, tx, rig.region.size);
        tx.publish();
        if (drops !== null && device !== null) {
          for (const p of drops) txDrops.expect(device.tx, p);
        }
        return;
      }
      case "rx buffers":
        if (device !== null) {
          for (const p of chains.spoilRx(rng, rig.region, q, device.rx)) {
            rxDrops.expect(device.rx, p);
          }
        }
        return;
      case "header noise":
        transport.headerNoise(rng);
        return;
      default: // idle: the good traffic has the queues to itself
        return;
    }
  }

  function actB(
    name: string,
    rng: Prng,
  ): boolean | void | Promise<boolean | void> {
    switch (name) {
      case "ring tamper":
        transport.ringTamper(rng);
        return;
      case "status tamper":
        transport.statusTamper(rng);
        return;
      case "device restart":
        return (async () => {
          await rig.restartDevice();
          // Half the time the actor, not the driver, reaches DRIVER_OK
          // first, so the owed TRANSPORT_RESET lands in its event ring.
          return rng.chance(0.5) ? transport.takeover(rng).running : false;
        })();
      default:
        return transport.takeover(rng).running;
    }
  }
}

/** Draws the iteration's action. */
function pickAction(rng: Prng): [ActionClass, string] {
  const x = rng.int(0, 999);
  if (x < 470) return ["A", "packets"];
  if (x < 500) return ["A", "flood"];
  if (x < 700) return ["A", "chains"];
  if (x < 780) return ["A", "rx buffers"];
  if (x < 840) return ["A", "header noise"];
  if (x < 960) return ["A", "idle"];
  if (x < 975) return ["B", "ring tamper"];
  if (x < 985) return ["B", "status tamper"];
  if (x < 997) return ["B", "takeover"];
  return ["B", "device restart"];
}

/** The well-behaved driver's settings for segment `n` of the run. */
export function driverSettings(
  seed: number,
  n: number,
): DriverTransportOptions {
  if (n === 0) return {}; // the defaults first
  const rng = new Prng(iterationSeed(seed, -1 - n));
  const mergeable = rng.chance(0.7);
  return {
    queueSize: rng.pick([8, 16, 64, 256, 256, 1024]),
    rxBufferSize: mergeable
      ? rng.pick([46, 512, 4096, 4096, 16384, 65536 + 46])
      : rng.pick([64, 1024, 4096, 4096, 65536 + 44]),
    mergeable,
    eventIdx: rng.chance(0.5),
  };
}

/** Seeds iteration `i`'s generator from the run's seed. */
export function iterationSeed(seed: number, i: number): number {
  return (Math.imul(seed >>> 0, 0x9e3779b1) ^ Math.imul(i + 1, 0x85ebca6b) ^
    (i >>> 16)) >>> 0;
}

function rerunHint(seed: number, f: FuzzFailure): string {
  return `deno task fuzz --seed ${seed} --iterations ${
    f.iteration + 1
  }   (the whole run up to the failure), or\n` +
    `deno task fuzz --seed ${seed} --start ${f.iteration} --iterations 1   (that iteration alone, on a fresh rig)`;
}

/** `gc()`, made available at run time (no command-line flag needed). */
function exposeGc(): () => void {
  const g = (globalThis as { gc?: () => void }).gc;
  if (typeof g === "function") return g;
  v8.setFlagsFromString("--expose-gc");
  return vm.runInNewContext("gc") as () => void;
}

function immediate(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

function mib(n: number): number {
  return Math.round(n / 1048576 * 10) / 10;
}

function round(n: number): number {
  return Math.round(n * 10) / 10;
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.stack ?? err.message : String(err);
}
