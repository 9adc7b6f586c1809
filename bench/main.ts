/**
 * `deno task bench`: every benchmark scenario, each figure next to a baseline
 * measured in the same run. Writes `bench/results.json`.
 *
 * @module
 */

import { report, runScenarios } from "./_harness.ts";
import { idleScenarios } from "./idle_scenarios.ts";
import { ringScenarios } from "./ring_scenarios.ts";

const results = await runScenarios([...ringScenarios(), ...idleScenarios()]);
await report(results, new URL("./results.json", import.meta.url).pathname);
