/**
 * Benchmark child: the guest agent, configured by one JSON argument. The
 * region is a file (polling), or comes from ivsock's ivshmem server as a
 * simulated guest attached like QEMU (doorbell mode). Prints
 * `ready forward=<port> ... control=<port>` once the transport is up.
 *
 * Besides the agent's own exposes and forwards, the agent process can be
 * an end of a transfer itself, as an application speaking vsock in the
 * guest would be, with no TCP leg inside the guest:
 *
 * - `sinks`: vsock ports answered by a sink in this process (reads to the
 *   end, answers with the byte count, as `_servers.ts` sink does);
 * - the control port: a line `bulk vsock PORT MIB` runs the benchmarks'
 *   bulk client from this process over vsock to host port PORT, and
 *   `bulk tcp PORT MIB` the same client over TCP loopback (the baselines);
 *   the answer is `ok MIB_PER_S` or `error MESSAGE`.
 *
 * @module
 */

import { mapFd, mapFile, type MappedFile } from "../device/shm/shm_file.ts";
import { IvshmemClient } from "../device/notify/ivshmem_client.ts";
import { recycleChunk } from "../device/vsock/chunk_pool.ts";
import type { VsockConnection } from "../device/vsock/connection.ts";
import type { VsockEngine } from "../device/vsock/engine.ts";
import { GuestAgent } from "../guest/agent.ts";
import { bulk, bulkOver } from "./_clients.ts";

interface Options {
  region?: string;
  ivshmemSocket?: string;
  exposes: Array<{ port: number; tcpPort: number }>;
  forwards: Array<{ port: number }>;
  sinks: number[];
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
for (const port of o.sinks) {
  const listener = agent.engine.listen(port);
  (async () => {
    for await (const conn of listener) void sink(conn);
  })();
}
const control = Deno.listen({ hostname: "127.0.0.1", port: 0 });
(async () => {
  for await (const c of control) void serveControl(c, agent.engine);
})();
console.log(
  `ready ${forwardListeners.map((p) => `forward=${p}`).join(" ")} control=${
    (control.addr as Deno.NetAddr).port
  }`,
);
Deno.addSignalListener("SIGTERM", async () => {
  await agent.stop(0);
  mapping.close();
  await client?.close();
  Deno.exit(0);
});

/** Reads to the end, answers with the byte count, half-closes. */
async function sink(conn: VsockConnection): Promise<void> {
  let n = 0;
  try {
    for (;;) {
      const chunk = await conn.read();
      if (chunk === null) break;
      n += chunk.length;
      recycleChunk(chunk);
    }
    await conn.write(new TextEncoder().encode(String(n)));
    conn.closeWrite();
  } catch {
    conn.reset("bench sink failed");
  }
}

/** Runs one `bulk` line from the control port and answers it. */
async function serveControl(c: Deno.TcpConn, engine: VsockEngine) {
  let reply: string;
  try {
    const buf = new Uint8Array(256);
    let line = "";
    while (!line.includes("\n")) {
      const n = await c.read(buf);
      if (n === null) break;
      line += new TextDecoder().decode(buf.subarray(0, n));
    }
    const [cmd, over, port, mib] = line.trim().split(" ");
    if (cmd !== "bulk" || (over !== "vsock" && over !== "tcp")) {
      throw new Error(`unknown command: ${line.trim()}`);
    }
    const rate = over === "tcp"
      ? await bulk(Number(port), Number(mib))
      : await vsockBulk(engine, Number(port), Number(mib));
    reply = `ok ${rate}`;
  } catch (err) {
    reply = `error ${err instanceof Error ? err.message : err}`;
  }
  try {
    await c.write(new TextEncoder().encode(`${reply}\n`));
  } finally {
    c.close();
  }
}

/** The benchmarks' bulk client, from this process over vsock. */
async function vsockBulk(
  engine: VsockEngine,
  port: number,
  mib: number,
): Promise<number> {
  const conn = await engine.connect(port);
  return await bulkOver({
    // Resolves once the bytes are in the ring: the chunk may be reused.
    writeAll: (chunk) => conn.write(chunk),
    closeWrite: () => Promise.resolve(conn.closeWrite()),
    read: () => conn.read(),
    close: () => conn.close(),
  }, mib);
}
