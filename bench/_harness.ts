/**
 * The benchmark harness: runs each scenario's subject and baselines in
 * alternating rounds (so drift in machine speed hits them alike), takes the
 * median of each, prints a table and writes `bench/results.json`.
 *
 * @module
 */

/** A measured figure, compared with one baseline. */
export interface ScenarioResult {
  name: string;
  unit: string;
  value: number;
  baseline: { name: string; value: number };
  /** value / baseline.value; null when the baseline measured 0 */
  ratio: number | null;
  /** The goal from the issue, when there is one, and whether it is met. */
  target?: { text: string; met: boolean };
}

/** How a figure is judged against its baseline or in absolute terms. */
export interface Target {
  text: string;
  met(value: number, baseline: number): boolean;
}

/** One baseline of a scenario. */
export interface Baseline {
  name: string;
  run(): Promise<number> | number;
  target?: Target;
}

/** A scenario: a subject and one or more baselines of the same unit. */
export interface Scenario {
  name: string;
  unit: string;
  /** Rounds of each; the median is reported. @default {5} */
  rounds?: number;
  /** Runs once before the rounds (warm-up, not recorded). */
  warmUp?: boolean;
  setup?(): Promise<void> | void;
  teardown?(): Promise<void> | void;
  subject(): Promise<number> | number;
  baselines: Baseline[];
}

/** Scenarios that threw, with why: printed and written with the results. */
export const failures: Array<{ name: string; error: string }> = [];

/** Runs scenarios in order; `only` filters by substring of the name. */
export async function runScenarios(
  scenarios: Scenario[],
  only?: string,
): Promise<ScenarioResult[]> {
  const results: ScenarioResult[] = [];
  for (const s of scenarios) {
    if (only !== undefined && !s.name.includes(only)) continue;
    console.error(`bench: ${s.name}`);
    try {
      await s.setup?.();
      if (s.warmUp ?? true) {
        await s.subject();
        for (const b of s.baselines) await b.run();
      }
      const subject: number[] = [];
      const base: number[][] = s.baselines.map(() => []);
      for (let i = 0; i < (s.rounds ?? 5); i++) {
        await settle();
        subject.push(await s.subject());
        for (const [j, b] of s.baselines.entries()) {
          await settle();
          base[j]!.push(await b.run());
        }
      }
      const value = median(subject);
      for (const [j, b] of s.baselines.entries()) {
        const bv = median(base[j]!);
        const result: ScenarioResult = {
          name: s.name,
          unit: s.unit,
          value: round(value),
          baseline: { name: b.name, value: round(bv) },
          // An idle process can measure 0% of a core: no ratio then.
          ratio: bv === 0 ? null : round(value / bv, 3),
        };
        if (b.target) {
          result.target = { text: b.target.text, met: b.target.met(value, bv) };
        }
        results.push(result);
      }
    } catch (err) {
      // One broken scenario must not cost the figures of the others: it is
      // reported, and the run's exit status says so.
      const message = err instanceof Error ? err.message : String(err);
      console.error(`bench: FAILED ${s.name}: ${message}`);
      failures.push({ name: s.name, error: message });
    } finally {
      await s.teardown?.();
    }
  }
  return results;
}

/** Prints a table and writes the JSON file. */
export async function report(
  results: ScenarioResult[],
  path: string,
): Promise<void> {
  const rows = results.map((r) => [
    r.name,
    `${fmt(r.value)} ${r.unit}`,
    `${fmt(r.baseline.value)} ${r.unit} (${r.baseline.name})`,
    r.ratio === null ? "-" : `${r.ratio}x`,
    r.target ? `${r.target.met ? "met" : "MISSED"}: ${r.target.text}` : "",
  ]);
  const head = ["scenario", "ivsock", "baseline", "ratio", "target"];
  const widths = head.map((h, i) =>
    Math.max(h.length, ...rows.map((r) => r[i]!.length))
  );
  const line = (cells: string[]) =>
    cells.map((c, i) => c.padEnd(widths[i]!)).join("  ").trimEnd();
  console.log(line(head));
  console.log(widths.map((w) => "-".repeat(w)).join("  "));
  for (const r of rows) console.log(line(r));
  const machine = {
    os: Deno.build.os,
    arch: Deno.build.arch,
    deno: Deno.version.deno,
    v8: Deno.version.v8,
    cpus: navigator.hardwareConcurrency,
    loadAverage: Deno.loadavg(),
    date: new Date().toISOString(),
  };
  await Deno.writeTextFile(
    path,
    JSON.stringify({ machine, scenarios: results, failures }, null, 2) + "\n",
  );
  for (const f of failures) console.log(`FAILED: ${f.name}: ${f.error}`);
  console.log(`\nwrote ${path}`);
}

/**
 * Quiet time before each measurement: longer than the wakers' spin and
 * short-poll phases (device/notify/waker.ts), so that ivsock's pollers
 * have gone back to sleep before a baseline runs. Otherwise they change
 * it: TCP loopback's round trip measured 22-38 us beside spinning wakers
 * (they keep the vCPUs awake), 57-82 us beside wakers polling every 0.1 ms,
 * and 24-28 us on a quiet machine.
 */
const SETTLE_MS = 200;

function settle(): Promise<void> {
  return new Promise((r) => setTimeout(r, SETTLE_MS));
}

export function median(xs: number[]): number {
  const s = [...xs].sort((x, y) => x - y);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

function round(x: number, digits = 1): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

function fmt(x: number): string {
  return x.toLocaleString("en-US");
}
