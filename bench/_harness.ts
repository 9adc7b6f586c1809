/**
 * The benchmark harness: runs each scenario's subject and baseline in
 * alternating rounds (so drift in machine speed hits both alike), takes the
 * median of each, prints a table and writes `bench/results.json`.
 *
 * @module
 */

/** One measured figure and what it is compared with. */
export interface ScenarioResult {
  name: string;
  unit: string;
  value: number;
  baseline: { name: string; value: number };
  /** value / baseline.value */
  ratio: number;
}

/** A scenario: two measurements of the same unit, taken interleaved. */
export interface Scenario {
  name: string;
  unit: string;
  baselineName: string;
  /** Rounds of each; the median is reported. */
  rounds?: number;
  subject(): Promise<number> | number;
  baseline(): Promise<number> | number;
}

/** Runs scenarios and returns their results. */
export async function runScenarios(
  scenarios: Scenario[],
): Promise<ScenarioResult[]> {
  const results: ScenarioResult[] = [];
  for (const s of scenarios) {
    const a: number[] = [];
    const b: number[] = [];
    const rounds = s.rounds ?? 5;
    // Warm-up round, not recorded: lets V8 optimise both sides first.
    await s.subject();
    await s.baseline();
    for (let i = 0; i < rounds; i++) {
      a.push(await s.subject());
      b.push(await s.baseline());
    }
    const value = median(a);
    const base = median(b);
    results.push({
      name: s.name,
      unit: s.unit,
      value: round(value),
      baseline: { name: s.baselineName, value: round(base) },
      ratio: round(value / base, 3),
    });
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
    `${r.ratio}x`,
  ]);
  const head = ["scenario", "ivsock", "baseline", "ratio"];
  const widths = head.map((h, i) =>
    Math.max(h.length, ...rows.map((r) => r[i]!.length))
  );
  const line = (cells: string[]) =>
    cells.map((c, i) => c.padEnd(widths[i]!)).join("  ");
  console.log(line(head));
  console.log(widths.map((w) => "-".repeat(w)).join("  "));
  for (const r of rows) console.log(line(r));
  const machine = {
    os: Deno.build.os,
    arch: Deno.build.arch,
    deno: Deno.version.deno,
    v8: Deno.version.v8,
    cpus: navigator.hardwareConcurrency,
    date: new Date().toISOString(),
  };
  await Deno.writeTextFile(
    path,
    JSON.stringify({ machine, scenarios: results }, null, 2) + "\n",
  );
  console.log(`\nwrote ${path}`);
}

function median(xs: number[]): number {
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
