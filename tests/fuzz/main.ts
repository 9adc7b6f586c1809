/**
 * `deno task fuzz --iterations N --seed S [--start I]`: runs the hostile-guest
 * fuzzer and exits 0 when every invariant held, 1 otherwise (printing the
 * seed and iteration of the failure and how to run it again).
 *
 * @module
 */

import { parseArgs } from "node:util";
import { runFuzz } from "./fuzz.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    iterations: { type: "string", default: "20000" },
    seed: { type: "string" },
    start: { type: "string", default: "0" },
    json: { type: "boolean", default: false },
  },
});

function integer(name: string, text: string): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < 0) {
    console.error(`--${name} must be a non-negative integer, received ${text}`);
    Deno.exit(2);
  }
  return n;
}

const seed = values.seed === undefined
  ? (Math.random() * 2 ** 32) >>> 0
  : integer("seed", values.seed);
const iterations = integer("iterations", values.iterations);
const start = integer("start", values.start);
console.log(
  `ivsock fuzz: seed ${seed}, iterations ${start}..${start + iterations - 1}`,
);
const report = await runFuzz({
  seed,
  iterations,
  start,
  log: (line) => console.log(line),
});
if (values.json) console.log(JSON.stringify(report, null, 2));
else {
  console.log(
    `done: ${report.iterations} iterations in ${report.elapsedMs} ms; ` +
      `${report.episodes} transport-level episodes (recovery mean ${report.recoveryMs.mean} ms, max ${report.recoveryMs.max} ms); ` +
      `good connections ${report.good.completed} completed, ${report.good.excused} ended by an episode; ` +
      `device accesses ${report.device.accesses}, out of bounds ${report.device.accessErrors}, out of scope ${report.device.violationCount}; ` +
      `heap ${(report.memory.baselineHeap / 2 ** 20).toFixed(1)} -> peak ${
        (report.memory.peakHeap / 2 ** 20).toFixed(1)
      } MiB`,
  );
  console.log(`actions: ${JSON.stringify(report.actions)}`);
}
if (report.failure !== null) {
  const f = report.failure;
  console.log(
    `\nFAILED at seed ${report.seed}, iteration ${f.iteration} (${f.action}):\n  ${f.message}`,
  );
  for (const line of f.context) console.log(`  | ${line}`);
  console.log(`\nrerun:\n${report.rerun}`);
  Deno.exit(1);
}
