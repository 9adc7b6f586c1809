/**
 * Benchmark child: the guest agent, configured by one JSON argument. The
 * region is a file (polling), or comes from ivsock's ivshmem server as a
 * simulated guest attached like QEMU (doorbell mode). Prints
 * `ready forward=<port> ...` once the transport is up.
 *
 * @module
 */

import { mapFd, mapFile, type MappedFile } from "../device/shm/shm_file.ts";
import { IvshmemClient } from "../device/notify/ivshmem_client.ts";
import { GuestAgent } from "../guest/agent.ts";

interface Options {
  region?: string;
  ivshmemSocket?: string;
  exposes: Array<{ port: number; tcpPort: number }>;
  forwards: Array<{ port: number }>;
  mergeable: boolean;
  rxBufferSize: number;
  queueSize: number;
}

const o = JSON.parse(Deno.args[0]!) as Options;
let mapping: MappedFile;
let client: IvshmemClient | null = null;
if (o.ivshmemSocket) {
  client = await IvshmemClient.connect(o.ivshmemSocket, { timeoutMs: 10_000 });
  mapping = mapFd(client.takeShmFd(), o.ivshmemSocket);
} else {
  mapping = mapFile(o.region!);
}
// Forwards listen on free ports; find them after start.
const forwardListeners = o.forwards.map(() => {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
});
const c = client;
const agent = await GuestAgent.start({
  region: mapping.region,
  exposes: o.exposes.map((e) => ({
    port: e.port,
    target: { kind: "tcp" as const, host: "127.0.0.1", port: e.tcpPort },
  })),
  forwards: o.forwards.map((f, i) => ({
    listen: { host: "127.0.0.1", port: forwardListeners[i]! },
    port: f.port,
  })),
  transport: {
    mergeable: o.mergeable,
    rxBufferSize: o.rxBufferSize,
    queueSize: o.queueSize,
    ...(c ? { driverPeer: c.id } : {}),
  },
  ...(c
    ? {
      ringDevice: (v: number) => void c.ring(0, v),
      doorbells: c.vectors.map((e) => e.fd),
    }
    : {}),
});
await agent.ready(20_000);
console.log(`ready ${forwardListeners.map((p) => `forward=${p}`).join(" ")}`);
Deno.addSignalListener("SIGTERM", async () => {
  await agent.stop(0);
  mapping.close();
  await client?.close();
  Deno.exit(0);
});
