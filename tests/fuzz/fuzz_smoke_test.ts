/**
 * The CI smoke run of the hostile-guest fuzzer (tests/fuzz/fuzz.ts): a fixed
 * seed, a bounded number of iterations. Longer runs: `deno task fuzz
 * --iterations N --seed S` (docs/reliability.md, "Fuzzing").
 */
import { assert, assertEquals } from "../../dev_deps.ts";
import { runFuzz } from "./fuzz.ts";

const SEED = 20261123;
const ITERATIONS = Number(Deno.env.get("IVSOCK_FUZZ_ITERATIONS") ?? 20_000);

Deno.test({
  name:
    `the device survives ${ITERATIONS} iterations of a hostile guest beside well-behaved connections (seed ${SEED})`,
  async fn() {
    const report = await runFuzz({ seed: SEED, iterations: ITERATIONS });
    const f = report.failure;
    assert(
      f === null,
      f === null
        ? ""
        : `iteration ${f.iteration} (${f.action}): ${f.message}\n${
          f.context.join("\n")
        }\nrerun: ${report.rerun}`,
    );
    assertEquals(report.iterations, ITERATIONS);
    assertEquals(report.device.accessErrors, 0, "no access outside the region");
    assertEquals(
      report.device.violationCount,
      0,
      "no write outside the device's scope",
    );
    assertEquals(
      report.device.logErrors,
      [],
      "the device loop's catch-all never fired",
    );
    assert(
      report.good.completed > ITERATIONS / 20,
      "good connections kept completing",
    );
    assert(
      report.episodes > ITERATIONS / 100,
      "transport-level episodes happened and recovered",
    );
    console.log(
      `fuzz smoke: ${report.iterations} iterations in ${report.elapsedMs} ms, ` +
        `${report.good.completed} good connections, ${report.episodes} episodes, ` +
        `${report.device.accesses} device accesses, heap ${
          (report.memory.baselineHeap / 2 ** 20).toFixed(1)
        } -> ${(report.memory.peakHeap / 2 ** 20).toFixed(1)} MiB`,
    );
  },
});
