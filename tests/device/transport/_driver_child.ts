/**
 * Test child: the driver role over a /dev/shm region, streaming a seeded
 * payload to the echoing device and checking every byte that comes back.
 * Prints `activated`, `deactivated <reason>`, `event <id>`,
 * `progress <bytes>` (every 1 MiB echoed) and finally `done <ok|MISMATCH>`.
 *
 * Usage: _driver_child.ts <path> <bytes> <timeoutMs>
 */

import { mapFile } from "../../../device/shm/shm_file.ts";
import { DriverTransport } from "../../../device/transport/driver_transport.ts";
import { DriverRunner } from "../../../device/transport/driver_runner.ts";
import { DriverStream } from "../../_support/echo_ports.ts";
import { Prng } from "../../_support/prng.ts";

const [path, bytes, timeout] = Deno.args;
const mapping = mapFile(path!);
const data = new Prng(42).bytes(Number(bytes));
let reported = 0;
const stream = new DriverStream(data, 16384, () => {
  while (stream.received - reported >= 1 << 20) {
    reported += 1 << 20;
    console.log(`progress ${reported}`);
  }
  if (stream.done) {
    const ok = data.every((b, i) => b === stream.echoed[i]);
    console.log(`done ${ok ? "ok" : "MISMATCH"}`);
  }
});
const port = {
  activated: (q: Parameters<DriverStream["activated"]>[0]) => {
    stream.activated(q);
    console.log("activated");
  },
  deactivated: (reason: string) => {
    stream.deactivated(reason);
    console.log(`deactivated ${reason}`);
  },
  event: (id: number) => {
    stream.event(id);
    console.log(`event ${id}`);
  },
  receive: stream.receive.bind(stream),
  transmit: stream.transmit.bind(stream),
};
const transport = new DriverTransport(mapping.region, {
  deviceTimeoutMs: Number(timeout),
});
const runner = new DriverRunner(transport, port, {
  heartbeatMs: 50,
  retryMs: 50,
});
const done = runner.run();
Deno.addSignalListener("SIGTERM", async () => {
  await runner.stop();
  await done;
  mapping.close();
  Deno.exit(0);
});
