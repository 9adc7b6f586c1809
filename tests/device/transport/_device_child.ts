/**
 * Test child: the device role over a /dev/shm region, echoing packets.
 * Prints one line per event: `ready <generation>`, `activated`,
 * `deactivated <reason>`. SIGTERM stops it cleanly.
 *
 * Usage: _device_child.ts <path> <timeoutMs>
 */

import { mapFile } from "../../../device/shm/shm_file.ts";
import { DeviceTransport } from "../../../device/transport/device_transport.ts";
import { DeviceRunner } from "../../../device/transport/device_runner.ts";
import { DeviceEcho } from "../../_support/echo_ports.ts";

const [path, timeout] = Deno.args;
const mapping = mapFile(path!, { mode: "create", size: 4 << 20 });
const transport = DeviceTransport.attach(mapping.region, {
  guestCid: 3,
  driverTimeoutMs: Number(timeout),
});
const echo = new DeviceEcho();
const port = {
  activated: () => {
    echo.activated();
    console.log("activated");
  },
  deactivated: (reason: string) => {
    echo.deactivated(reason);
    console.log(`deactivated ${reason}`);
  },
  receive: echo.receive.bind(echo),
  transmit: echo.transmit.bind(echo),
};
const runner = new DeviceRunner(transport, port, { heartbeatMs: 50 });
const done = runner.run();
console.log(`ready ${transport.generation}`);
Deno.addSignalListener("SIGTERM", async () => {
  await runner.stop();
  await done;
  mapping.close();
  Deno.exit(0);
});
