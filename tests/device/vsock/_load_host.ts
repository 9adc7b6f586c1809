/**
 * Load test child, host side: the device role plus a vsock engine. Opens
 * `connections` connections to the guest at once and checks every byte.
 * Prints `ready`, then `result <json>`.
 *
 * Usage: _load_host.ts <region path> <connections> <max bytes> <seed>
 */

import { mapFile } from "../../../device/shm/shm_file.ts";
import { DeviceTransport } from "../../../device/transport/device_transport.ts";
import { DeviceRunner } from "../../../device/transport/device_runner.ts";
import { VsockEngine } from "../../../device/vsock/engine.ts";
import { DeviceEnginePort } from "../../../device/vsock/transport_ports.ts";
import { ByteReader } from "../../_support/byte_reader.ts";
import {
  LOAD_PORT,
  receivePayload,
  sendPayload,
  sizes,
} from "./_load_protocol.ts";

const [path, connections, max, seed] = Deno.args.map((
  a,
  i,
) => (i === 0 ? a : Number(a))) as [string, number, number, number];
const mapping = mapFile(path, { mode: "create", size: 16 << 20 });
const engine = new VsockEngine({ connectTimeoutMs: 10_000 });
const transport = DeviceTransport.attach(mapping.region, { guestCid: 3 });
const runner = new DeviceRunner(transport, new DeviceEnginePort(engine, 3));
engine.setKick(() => runner.kick());
const running = runner.run();
console.log("ready");
while (!engine.active) await new Promise((r) => setTimeout(r, 10));

const started = performance.now();
let ok = 0;
let mismatched = 0;
const failures: string[] = [];
let bytes = 0;
await Promise.all(
  Array.from({ length: connections }, async (_, i) => {
    try {
      const { up, down } = sizes(seed, i, max);
      const conn = await engine.connect(LOAD_PORT);
      const w = conn.writable.getWriter();
      const header = new Uint8Array(12);
      new DataView(header.buffer).setUint32(0, i, true);
      new DataView(header.buffer).setUint32(4, up, true);
      new DataView(header.buffer).setUint32(8, down, true);
      const reader = new ByteReader(conn.readable);
      const [, good] = await Promise.all([
        (async () => {
          await w.write(header);
          await sendPayload(w, seed ^ i, up);
          await w.close();
        })(),
        receivePayload(reader, down),
      ]);
      bytes += up + down;
      if (good) ok++;
      else mismatched++;
      await conn.closed;
    } catch (err) {
      failures.push(
        `connection ${i}: ${err instanceof Error ? err.message : err}`,
      );
    }
  }),
);
const ms = performance.now() - started;
console.log(
  `result ${
    JSON.stringify({
      ok,
      mismatched,
      failures: failures.slice(0, 5),
      failed: failures.length,
      bytes,
      ms: Math.round(ms),
    })
  }`,
);
engine.close();
await runner.stop();
await running;
mapping.close();
