/**
 * The soak: `deno task soak [--minutes M] [options]`.
 *
 * The sidecar (`mod.ts serve --config`) and the guest agent (`mod.ts guest
 * --region`) run as child processes: the soak goes through the real command
 * line, and each one's resident memory is its own, not mixed with the
 * traffic generator's. This process plays everything around them on
 * loopback, as the simulated guest does: host TCP and WebSocket clients,
 * the guest's local service and local clients (through the agent's
 * `--expose` and `--forward`), and the host's TCP target.
 *
 * `--connections` checked transfers run at once (see
 * tests/_support/checked_transfer.ts: every byte checked where it arrives
 * and by SHA-256, both ways, with an end-to-end acknowledgement), each
 * replaced by the next as it finishes, for `--minutes`. Connection `i` is
 * planned from the seed alone (tests/soak/_mix.ts): route, sizes, and
 * whether the client or the service resets it mid-stream. A reset must be
 * seen by the other side as the stream ending early, never as a mismatch
 * nor as a success.
 *
 * Every few seconds the sidecar's and the agent's VmRSS are sampled. At the
 * end a table is printed, then `soak-result {json}`; the exit status is 1
 * on any mismatch, unexpected failure, connection left behind or unclean
 * exit of either child.
 *
 * @module
 */

import { parseArgs } from "../../deps.ts";
import {
  type Channel,
  connChannel,
  openSocket,
  openWebSocket,
  type Outcome,
  Pattern,
  runClient,
  socketChannel,
  wsChannel,
} from "../_support/checked_transfer.ts";
import type { Child } from "../_support/child.ts";
import {
  freePort,
  Stack,
  waitUntil,
  within,
} from "../_support/process_stack.ts";
import { type Kind, plan, type Planned } from "./_mix.ts";
import { RssSampler, type RssSummary } from "./_rss.ts";
import { SoakService } from "./_service.ts";
import { exists } from "../_support/exists.ts";

const HELP = `Usage: deno task soak [options]

  --minutes M          how long to run (default 10; fractions allowed)
  --connections N      concurrent connections (default 200)
  --max-bytes N        largest stream each way (default 1048576)
  --reset-fraction F   share of connections reset mid-stream (default 0.05)
  --seed N             plans every connection (default 20261124)
  --sample-seconds S   RSS sampling period (default 5)
  --json FILE          also write the result as JSON to FILE
`;

/** A transfer with no byte either way for this long has failed. */
const STALL_MS = 30_000;
/** How long a finished client waits for its service side's verdict. */
const SERVICE_VERDICT_MS = 15_000;
/**
 * How long a client that reset waits for its session by id before claiming
 * one that ended without a header.
 */
const HEADERLESS_AFTER_MS = 2000;
/** Bytes of the pattern the streams are cut from. */
const PATTERN_BYTES = 4 << 20;

interface Options {
  minutes: number;
  connections: number;
  maxBytes: number;
  resetFraction: number;
  seed: number;
  sampleSeconds: number;
  json: string | null;
}

function options(args: string[]): Options {
  const { values } = parseArgs({
    args,
    options: {
      minutes: { type: "string" },
      connections: { type: "string" },
      "max-bytes": { type: "string" },
      "reset-fraction": { type: "string" },
      seed: { type: "string" },
      "sample-seconds": { type: "string" },
      json: { type: "string" },
      help: { type: "boolean" },
    },
    strict: true,
    allowPositionals: false,
  });
  if (values.help) {
    console.log(HELP);
    Deno.exit(0);
  }
  const num = (name: string, v: string | undefined, d: number, min: number) => {
    const n = v === undefined ? d : Number(v);
    if (!Number.isFinite(n) || n < min) {
      throw new RangeError(
        `--${name}: expected a number of at least ${min}, received ${v}`,
      );
    }
    return n;
  };
  return {
    minutes: num("minutes", values.minutes, 10, 0),
    connections: Math.floor(num("connections", values.connections, 200, 1)),
    maxBytes: Math.floor(num("max-bytes", values["max-bytes"], 1 << 20, 1)),
    resetFraction: Math.min(
      1,
      num("reset-fraction", values["reset-fraction"], 0.05, 0),
    ),
    seed: Math.floor(num("seed", values.seed, 20261124, 0)),
    sampleSeconds: num("sample-seconds", values["sample-seconds"], 5, 0.1),
    json: values.json ?? null,
  };
}

/** Counters of the run. */
interface Totals {
  started: number;
  completed: number;
  completedByKind: Record<Kind, number>;
  resetsInjected: { client: number; service: number };
  resetsSeen: number;
  /** Client resets that happened before the route accepted the connection. */
  resetsUnaccepted: number;
  mismatches: number;
  failures: number;
  /** Payload bytes moved, as the clients counted them (both ways). */
  bytes: number;
  samples: string[];
}

async function main(): Promise<number> {
  const o = options(Deno.args);
  const pattern = new Pattern(o.seed, PATTERN_BYTES);
  const guestService = await SoakService.start(pattern, STALL_MS);
  const hostTarget = await SoakService.start(pattern, STALL_MS);
  const h2gPort = freePort();
  const wsPort = freePort();
  const fwdPort = freePort();
  const stack = await Stack.create({
    routes: [
      {
        name: "h2g",
        from: { type: "tcp", host: "127.0.0.1", port: h2gPort },
        to: { type: "vsock", port: 5000 },
      },
      {
        name: "ws",
        from: { type: "ws", host: "127.0.0.1", port: wsPort, path: "/soak" },
        to: { type: "vsock", port: 5000 },
      },
      {
        name: "g2h",
        from: { type: "vsock", port: 6000 },
        to: { type: "tcp", host: "127.0.0.1", port: hostTarget.port },
      },
    ],
    exposes: [`5000=127.0.0.1:${guestService.port}`],
    forwards: [`127.0.0.1:${fwdPort}=6000`],
    driverTimeoutMs: 3000,
    shutdownGraceMs: 2000,
  });
  const totals: Totals = {
    started: 0,
    completed: 0,
    completedByKind: { h2g: 0, ws: 0, g2h: 0 },
    resetsInjected: { client: 0, service: 0 },
    resetsSeen: 0,
    resetsUnaccepted: 0,
    mismatches: 0,
    failures: 0,
    bytes: 0,
    samples: [],
  };
  const note = (what: string) => {
    if (totals.samples.length < 20) totals.samples.push(what);
    console.error(`soak: ${what}`);
  };
  let sampler: RssSampler | null = null;
  let progress: ReturnType<typeof setInterval> | undefined;
  let interrupted = false;
  const onSigint = () => {
    interrupted = true;
  };
  // Ctrl-C or SIGTERM: stop starting connections, finish, report, clean up.
  Deno.addSignalListener("SIGINT", onSigint);
  Deno.addSignalListener("SIGTERM", onSigint);
  const problems: string[] = [];
  try {
    const serve = await stack.startServe();
    const guest = await stack.startGuest();
    await stack.waitReadyz(200);
    console.error(
      `soak: sidecar pid ${serve.process.pid}, agent pid ${guest.process.pid}, admin API ${stack.adminUrl}, region ${stack.region}`,
    );
    sampler = new RssSampler(
      { sidecar: serve.process.pid, agent: guest.process.pid },
      o.sampleSeconds * 1000,
    );
    const started = performance.now();
    const deadline = started + o.minutes * 60_000;
    let next = 0;
    const one = async (p: Planned) => {
      const service = p.kind === "g2h" ? hostTarget : guestService;
      if (p.resetBy !== null) totals.resetsInjected[p.resetBy]++;
      const client = await connect(p, {
        h2g: h2gPort,
        g2h: fwdPort,
        ws: `ws://127.0.0.1:${wsPort}/soak`,
      }, pattern);
      totals.bytes += client.bytesIn + client.bytesOut;
      // A client's reset may overtake its header: then the session ended
      // without an id, and one such session is claimed instead.
      let server = await service.outcome(
        p.spec.id,
        p.resetBy === "client" ? HEADERLESS_AFTER_MS : SERVICE_VERDICT_MS,
      );
      const headerless = server === null && p.resetBy === "client" &&
        service.claimHeaderless();
      const maybeUnaccepted = p.resetBy === "client" && p.kind !== "ws" &&
        client.bytesIn === 0;
      if (server === null && !headerless && !maybeUnaccepted) {
        server = await service.outcome(p.spec.id, SERVICE_VERDICT_MS);
      }
      const verdict = judge(p, client, server, headerless);
      if (verdict === "completed") {
        totals.completed++;
        totals.completedByKind[p.kind]++;
      } else if (verdict === "reset-seen") totals.resetsSeen++;
      else if (verdict === "reset-unaccepted") totals.resetsUnaccepted++;
      else {
        if (verdict === "mismatch") totals.mismatches++;
        else totals.failures++;
        note(
          `${verdict}: connection ${p.spec.id} (${p.kind}, up ${p.spec.up}, down ${p.spec.down}, reset by ${
            p.resetBy ?? "nobody"
          }): client ${describe(client)}; service ${
            server === null ? "no session found" : describe(server)
          }`,
        );
      }
    };
    const worker = async () => {
      while (performance.now() < deadline && !interrupted) {
        const p = plan(next++, {
          seed: o.seed,
          maxBytes: o.maxBytes,
          resetFraction: o.resetFraction,
          patternSize: PATTERN_BYTES,
        });
        totals.started++;
        await one(p);
      }
    };
    progress = setInterval(() => {
      const s = sampler!.samples.at(-1)?.kib ?? {};
      console.error(
        `soak ${
          clock(performance.now() - started)
        }: ${totals.started} started, ${totals.completed} completed, resets ${
          totals.resetsSeen + totals.resetsUnaccepted
        }/${
          totals.resetsInjected.client + totals.resetsInjected.service
        } seen, ${
          gib(totals.bytes)
        }, mismatches ${totals.mismatches}, failures ${totals.failures}, RSS sidecar ${
          mib(s.sidecar)
        } agent ${mib(s.agent)}`,
      );
    }, o.minutes <= 1 ? 10_000 : 30_000);
    await Promise.all(Array.from({ length: o.connections }, worker));
    clearInterval(progress);
    const elapsedMs = performance.now() - started;
    sampler.stop();

    // Nothing may be left behind on either side.
    await waitUntil(
      () => guestService.open === 0 && hostTarget.open === 0,
      15_000,
      () =>
        `service sessions to end (guest ${guestService.open}, host ${hostTarget.open})`,
    ).catch((err) => problems.push(err.message));
    await stack.waitNoConnections(15_000).catch((err) =>
      problems.push(err.message)
    );
    const routes = (await stack.admin("/v1/routes")).body as Array<
      { name: string; stats: Record<string, unknown> }
    >;
    const serveExit = await stopWithin(serve, 30_000);
    const guestExit = await stopWithin(guest, 30_000);
    for (
      const [name, child, exit] of [
        ["serve", serve, serveExit],
        ["guest", guest, guestExit],
      ] as const
    ) {
      if (exit.code === 0) continue;
      problems.push(`${name} exited ${exit.code}`);
      console.error(
        `soak: ${name} exited ${exit.code}; its last lines:\n  ${
          child.lines.slice(-15).join("\n  ")
        }`,
      );
    }
    if (exists(stack.region)) problems.push("the region file was left");
    const errorLines = [...serve.lines, ...guest.lines].filter((l) =>
      / ERROR /.test(l)
    );
    if (errorLines.length > 0) {
      problems.push(`${errorLines.length} ERROR log lines`);
      for (const l of errorLines.slice(0, 5)) note(l);
    }
    const warnLines = [...serve.lines, ...guest.lines].filter((l) =>
      / WARN /.test(l)
    );
    const warnings = warnLines.length;
    // The distinct warnings, without their timestamps and numbers.
    const warnKinds = [
      ...new Set(
        warnLines.map((l) =>
          l.replace(/^\S+ WARN\s+/, "").replace(/\d+/g, "N").slice(0, 120)
        ),
      ),
    ].slice(0, 10);

    const result = {
      minutes: round(elapsedMs / 60_000, 2),
      seed: o.seed,
      concurrency: o.connections,
      maxBytes: o.maxBytes,
      resetFraction: o.resetFraction,
      connections: totals.started,
      completed: totals.completed,
      completedByKind: totals.completedByKind,
      resetsInjected: totals.resetsInjected,
      resetsSeen: totals.resetsSeen,
      resetsUnaccepted: totals.resetsUnaccepted,
      mismatches: totals.mismatches,
      failures: totals.failures,
      bytes: totals.bytes,
      mibPerSecond: round(totals.bytes / (1 << 20) / (elapsedMs / 1000), 1),
      connectionsPerSecond: round(totals.started / (elapsedMs / 1000), 1),
      rss: {
        sidecar: sampler.summary("sidecar"),
        agent: sampler.summary("agent"),
      },
      routes: Object.fromEntries(routes.map((r) => [r.name, r.stats])),
      warnLogLines: warnings,
      warnKinds,
      problems,
      notes: totals.samples,
    };
    printTable(result);
    console.log(`soak-result ${JSON.stringify(result)}`);
    if (o.json !== null) {
      await Deno.writeTextFile(o.json, JSON.stringify(result, null, 2) + "\n");
    }
    return result.mismatches === 0 && result.failures === 0 &&
        problems.length === 0
      ? 0
      : 1;
  } finally {
    clearInterval(progress);
    sampler?.stop();
    Deno.removeSignalListener("SIGINT", onSigint);
    Deno.removeSignalListener("SIGTERM", onSigint);
    await stack.close();
    await guestService.close();
    await hostTarget.close();
  }
}

/** SIGTERM, then SIGKILL if `child` has not exited within `ms`. */
async function stopWithin(
  child: Child,
  ms: number,
): Promise<Deno.CommandStatus> {
  try {
    child.process.kill("SIGTERM");
  } catch {
    // Exited already.
  }
  return await child.exited(ms).catch(() => child.stop("SIGKILL"));
}

/** Opens connection `p` on its route and runs the client side. */
async function connect(
  p: Planned,
  to: { h2g: number; g2h: number; ws: string },
  pattern: Pattern,
): Promise<Outcome> {
  let ch: Channel;
  let closed: Promise<unknown> = Promise.resolve();
  try {
    if (p.kind === "ws") {
      const w = wsChannel(await openWebSocket(to.ws, 10_000));
      ch = w;
      closed = w.closed;
    } else {
      // node:net can reset (RST) for real; Deno's connections are faster.
      ch = p.resetBy === "client"
        ? socketChannel(await openSocket(to[p.kind]))
        : connChannel(
          await Deno.connect({ hostname: "127.0.0.1", port: to[p.kind] }),
        );
    }
  } catch (err) {
    return {
      kind: "ended",
      detail: `connect: ${err instanceof Error ? err.message : err}`,
      bytesIn: 0,
      bytesOut: 0,
    };
  }
  const outcome = await runClient(ch, p.spec, pattern, {
    resetAt: p.clientResetAt,
    stallMs: STALL_MS,
  });
  try {
    await within(closed, 10_000, "the WebSocket to close");
  } catch (err) {
    return {
      kind: "stalled",
      detail: err instanceof Error ? err.message : String(err),
      bytesIn: outcome.bytesIn,
      bytesOut: outcome.bytesOut,
    };
  }
  return outcome;
}

/**
 * What a connection's two ends say together: completed (both checked and
 * acknowledged), a reset seen by the side that did not make it, a mismatch,
 * or a failure (anything else).
 */
function judge(
  p: Planned,
  client: Outcome,
  server: Outcome | null,
  headerless: boolean,
): "completed" | "reset-seen" | "reset-unaccepted" | "mismatch" | "failure" {
  if (client.kind === "mismatch" || server?.kind === "mismatch") {
    return "mismatch";
  }
  if (p.resetBy === null) {
    return client.kind === "ok" && server?.kind === "ok"
      ? "completed"
      : "failure";
  }
  if (p.resetBy === "client") {
    if (client.kind !== "reset") return "failure";
    if (headerless || server?.kind === "ended") return "reset-seen";
    // Reset while still waiting in the route's backlog: the sidecar skips
    // it, so nothing ever reached the guest, and the client got nothing.
    return server === null && client.bytesIn === 0 && p.kind !== "ws"
      ? "reset-unaccepted"
      : "failure";
  }
  return server?.kind === "reset" && client.kind === "ended"
    ? "reset-seen"
    : "failure";
}

function describe(o: Outcome): string {
  return `${o.kind}${
    "detail" in o ? ` (${o.detail})` : ""
  } in ${o.bytesIn} out ${o.bytesOut}`;
}

function printTable(r: {
  minutes: number;
  seed: number;
  concurrency: number;
  maxBytes: number;
  resetFraction: number;
  connections: number;
  completed: number;
  completedByKind: Record<Kind, number>;
  resetsInjected: { client: number; service: number };
  resetsSeen: number;
  resetsUnaccepted: number;
  mismatches: number;
  failures: number;
  bytes: number;
  mibPerSecond: number;
  connectionsPerSecond: number;
  rss: Record<string, RssSummary>;
  warnLogLines: number;
  problems: string[];
}): void {
  const rows: Array<[string, string]> = [
    ["duration", `${r.minutes} min`],
    [
      "settings",
      `seed ${r.seed}, ${r.concurrency} concurrent, streams up to ${r.maxBytes} B each way, ${
        r.resetFraction * 100
      }% reset`,
    ],
    ["connections", String(r.connections)],
    ["  completed, checked both ways", String(r.completed)],
    ["    host -> guest, TCP", String(r.completedByKind.h2g)],
    ["    host -> guest, WebSocket", String(r.completedByKind.ws)],
    ["    guest -> host, TCP", String(r.completedByKind.g2h)],
    [
      "  resets injected (client/service)",
      `${
        r.resetsInjected.client + r.resetsInjected.service
      } (${r.resetsInjected.client}/${r.resetsInjected.service})`,
    ],
    ["  resets seen by the other side", String(r.resetsSeen)],
    ["  resets before the route accepted", String(r.resetsUnaccepted)],
    ["mismatches", String(r.mismatches)],
    ["unexpected failures", String(r.failures)],
    ["payload bytes", `${r.bytes} (${gib(r.bytes)}, ${r.mibPerSecond} MiB/s)`],
    ["connections per second", String(r.connectionsPerSecond)],
  ];
  for (const [name, s] of Object.entries(r.rss)) {
    rows.push(
      [
        `${name} RSS start / end / max`,
        `${mib(s.startKib)} / ${mib(s.endKib)} / ${mib(s.maxKib)}`,
      ],
      [
        `${name} RSS first / last quarter`,
        `${mib(s.firstQuarterKib)} / ${mib(s.lastQuarterKib)} (drift ${
          s.driftKib >= 0 ? "+" : ""
        }${s.driftKib} KiB)`,
      ],
      [
        `${name} RSS slope, all / 2nd half`,
        `${s.slopeKibPerMin} / ${s.secondHalfSlopeKibPerMin} KiB/min (${s.samples} samples)`,
      ],
    );
  }
  rows.push(["WARN log lines (both)", String(r.warnLogLines)]);
  rows.push([
    "problems",
    r.problems.length === 0 ? "none" : r.problems.join("; "),
  ]);
  const width = Math.max(...rows.map(([k]) => k.length));
  console.log("\nivsock soak");
  console.log("-".repeat(width + 40));
  for (const [k, v] of rows) console.log(`${k.padEnd(width)}  ${v}`);
  console.log("-".repeat(width + 40));
}

function clock(ms: number): string {
  const s = Math.floor(ms / 1000);
  return `${String(Math.floor(s / 60)).padStart(2, "0")}:${
    String(s % 60).padStart(2, "0")
  }`;
}

function mib(kib: number | undefined): string {
  return kib === undefined ? "?" : `${(kib / 1024).toFixed(1)} MiB`;
}

function gib(bytes: number): string {
  return `${(bytes / (1 << 30)).toFixed(2)} GiB`;
}

function round(x: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

if (import.meta.main) Deno.exit(await main());
