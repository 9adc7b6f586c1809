/**
 * Load test child, guest side: the driver role plus a vsock engine,
 * listening on the load port; answers every connection with its own seeded
 * payload and checks what it receives. Prints `result <json>` on SIGTERM.
 *
 * Usage: _load_guest.ts <region path> <seed>
 */

import { mapFile } from "../../../device/shm/shm_file.ts";
import { DriverTransport } from "../../../device/transport/driver_transport.ts";
import { DriverRunner } from "../../../device/transport/driver_runner.ts";
import { VsockEngine } from "../../../device/vsock/engine.ts";
import { DriverEnginePort } from "../../../device/vsock/transport_ports.ts";
import { ByteReader } from "../../_support/byte_reader.ts";
import { LOAD_PORT, receivePayload, sendPayload } from "./_load_protocol.ts";

const [path, seedText] = Deno.args;
const seed = Number(seedText);
let mapping;
for (;;) {
  try {
    mapping = mapFile(path!);
    break;
  } catch {
    await new Promise((r) => setTimeout(r, 20));
  }
}
const engine = new VsockEngine();
const runner = new DriverRunner(
  new DriverTransport(mapping.region),
  new DriverEnginePort(engine),
);
engine.setKick(() => runner.kick());
const running = runner.run();
const listener = engine.listen(LOAD_PORT, { backlog: 4096 });

let ok = 0;
let mismatched = 0;
const failures: string[] = [];
const serve = (async () => {
  for await (const conn of listener) {
    (async () => {
      try {
        const reader = new ByteReader(conn.readable);
        const header = new DataView((await reader.exactly(12)).buffer);
        const [i, up, down] = [
          header.getUint32(0, true),
          header.getUint32(4, true),
          header.getUint32(8, true),
        ];
        const w = conn.writable.getWriter();
        const [good] = await Promise.all([
          receivePayload(reader, up),
          (async () => {
            await sendPayload(w, (seed ^ i) + 1, down);
            await w.close();
          })(),
        ]);
        if (good) ok++;
        else mismatched++;
      } catch (err) {
        failures.push(err instanceof Error ? err.message : String(err));
      }
    })();
  }
})();
console.log("ready");
Deno.addSignalListener("SIGTERM", async () => {
  console.log(
    `result ${
      JSON.stringify({
        ok,
        mismatched,
        failed: failures.length,
        failures: failures.slice(0, 5),
      })
    }`,
  );
  listener.close();
  await serve;
  engine.close();
  await runner.stop();
  await running;
  mapping.close();
  Deno.exit(0);
});
