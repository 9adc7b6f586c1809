/**
 * `deno task bench [filter]`: every benchmark scenario, each figure next to
 * its baseline measured in the same run, with the targets marked.
 * Writes `bench/results.json`. A filter runs only scenarios whose name
 * contains it.
 *
 * @module
 */

import { failures, report, runScenarios } from "./_harness.ts";
import { blockingEndpointScenarios } from "./blocking_scenarios.ts";
import { idleScenarios } from "./idle_scenarios.ts";
import {
  connectionScenarios,
  latencyScenarios,
  memoryScenarios,
  throughputScenarios,
} from "./path_scenarios.ts";
import { ringScenarios } from "./ring_scenarios.ts";

const results = await runScenarios([
  ...throughputScenarios(),
  ...latencyScenarios(),
  ...connectionScenarios(),
  ...blockingEndpointScenarios(),
  ...memoryScenarios(),
  ...idleScenarios(),
  ...ringScenarios(),
], Deno.args[0]);
await report(results, new URL("./results.json", import.meta.url).pathname);
if (failures.length > 0) Deno.exit(1);
