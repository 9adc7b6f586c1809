/**
 * The sidecar (`mod.ts serve`) with one addition: SIGUSR2 writes a V8 heap
 * snapshot to /tmp. How docs/performance.md's memory findings were taken:
 *
 *   IVSOCK_BENCH_SERVE=./_snapshot_serve.ts deno task bench memory
 *
 * and `kill -USR2` the sidecar before and while connections are held.
 *
 * @module
 */

import v8 from "node:v8";
import { main } from "../cli/main.ts";

Deno.addSignalListener("SIGUSR2", () => {
  const file = v8.writeHeapSnapshot(
    `/tmp/ivsock-${Deno.pid}-${Date.now()}.heapsnapshot`,
  );
  console.error(`heap snapshot written to ${file}`);
});
Deno.exit(await main(Deno.args));
