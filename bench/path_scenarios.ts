/**
 * The whole path, each part its own process: a client, the guest agent, the
 * region, the sidecar, a TCP server. Against the same client and server over
 * direct TCP loopback, and (for bulk transfer) through two chained socat
 * relays, what people run today to bridge vsock and TCP.
 *
 * @module
 */

import type { Baseline, Scenario } from "./_harness.ts";
import { bulk, connectRate, openIdle, pingPong, quantile } from "./_clients.ts";
import {
  freePort,
  GuestServer,
  rssKiB,
  Servers,
  SocatChain,
  Stack,
  type StackOptions,
} from "./_stack.ts";

const BULK_MIB = 256;

/**
 * Block size of the native relay pair: the size of the sidecar's own
 * socket reads (proxy/tcp_streams.ts READ_SIZE).
 */
const NATIVE_BLOCK = 256 * 1024;

interface Variant {
  mergeable: boolean;
  rxBufferSize: number;
}

const VARIANTS: Variant[] = [
  { mergeable: true, rxBufferSize: 4096 },
  { mergeable: true, rxBufferSize: 65536 },
  { mergeable: false, rxBufferSize: 4096 },
  { mergeable: false, rxBufferSize: 65536 },
];

function variantName(v: Variant): string {
  return `${v.mergeable ? "mergeable" : "one-buffer"} ${
    v.rxBufferSize / 1024
  } KiB rx buffers`;
}

/**
 * Where the guest's end of a bulk transfer runs: a client or sink process
 * reaching the agent over TCP loopback (the whole path, as a guest service
 * or client behind the agent's exposes and forwards), or the agent process
 * itself (bench/_guest.ts), as an application speaking vsock in the guest
 * would, with no TCP leg inside the guest.
 */
export type GuestEnd = "tcp" | "agent";

function bulkName(direction: string, end: GuestEnd, v: Variant): string {
  const where = end === "tcp"
    ? ""
    : direction === "guest to host"
    ? " source in the agent process,"
    : " sink in the agent process,";
  return `bulk ${direction},${where} ${variantName(v)}, 64 KiB writes`;
}

/**
 * The routes and guest settings of a bulk transfer to `sinkPort`: guest to
 * host (`up`) through vsock port 6000 and a host route to the sink, or host
 * to guest through a host listener on `routePort` and vsock port 9; the
 * guest's end behind the agent's forward or expose (`tcp`) or in the agent
 * process (`agent`).
 */
export function bulkPath(
  up: boolean,
  end: GuestEnd,
  sinkPort: number,
  routePort: number,
): Pick<StackOptions, "routes" | "forwards" | "exposes" | "sinks"> {
  return {
    routes: up
      ? [{
        name: "up",
        from: { type: "vsock", port: 6000 },
        to: { type: "tcp", host: "127.0.0.1", port: sinkPort },
      }]
      : [{
        name: "down",
        from: { type: "tcp", port: routePort },
        to: { type: "vsock", port: 9 },
      }],
    forwards: up && end === "tcp" ? [{ port: 6000 }] : [],
    exposes: !up && end === "tcp" ? [{ port: 9, tcpPort: sinkPort }] : [],
    sinks: !up && end === "agent" ? [9] : [],
  };
}

/** Bulk throughput both ways, for each guest end and rx buffer variant. */
export function throughputScenarios(): Scenario[] {
  const out: Scenario[] = [];
  for (const end of ["tcp", "agent"] as const) {
    for (const direction of ["guest to host", "host to guest"] as const) {
      for (const v of VARIANTS) out.push(bulkScenario(end, direction, v));
    }
  }
  return out;
}

function bulkScenario(
  end: GuestEnd,
  direction: "guest to host" | "host to guest",
  v: Variant,
): Scenario {
  const up = direction === "guest to host";
  let servers: Servers;
  let stack: Stack;
  let socat: SocatChain;
  let native: SocatChain | null = null;
  let entry = 0;
  // The client: the benchmark process, or (guest to host from the agent
  // process) the same client code run in the agent, for the baselines too.
  const client = (port: number) =>
    end === "agent" && up
      ? stack.guestBulk("tcp", port, BULK_MIB)
      : bulk(port, BULK_MIB);
  const baselines: Baseline[] = [
    {
      name: "direct TCP loopback",
      run: () => client(servers.ports.sink!),
      target: { text: ">= 0.5x direct TCP", met: (x, b) => x >= 0.5 * b },
    },
    {
      name: "two chained socat relays",
      run: () => client(socat.port),
      target: { text: ">= 1.0x chained socat", met: (x, b) => x >= b },
    },
  ];
  if (end === "tcp") {
    baselines.push({
      // No target: the same shape as ivsock's path (a TCP leg in, a second
      // process over a local channel, a TCP leg out) with native relays
      // and no ring, which bounds any relay of this shape on the machine
      // (docs/performance.md).
      name: "socat TCP-UNIX-TCP relay pair, 256 KiB blocks",
      run: () => bulk(native!.port, BULK_MIB),
    });
  }
  return {
    name: bulkName(direction, end, v),
    unit: "MiB/s",
    rounds: 3,
    async setup() {
      servers = await Servers.start(["sink"]);
      const sink = servers.ports.sink!;
      const routePort = freePort();
      stack = await Stack.start({
        ...bulkPath(up, end, sink, routePort),
        mergeable: v.mergeable,
        rxBufferSize: v.rxBufferSize,
      });
      entry = up ? (end === "tcp" ? stack.forwardPorts[0]! : 0) : routePort;
      socat = await SocatChain.start(sink);
      if (end === "tcp") {
        native = await SocatChain.start(sink, {
          via: "unix",
          blockSize: NATIVE_BLOCK,
        });
      }
    },
    async teardown() {
      await native?.stop();
      await socat?.stop();
      await stack?.stop();
      await servers?.stop();
    },
    subject: () =>
      end === "agent" && up
        ? stack.guestBulk("vsock", 6000, BULK_MIB)
        : bulk(entry, BULK_MIB),
    baselines,
  };
}

/** 64-byte ping-pong round trips, p50 and p99, polling and doorbell modes. */
export function latencyScenarios(): Scenario[] {
  const out: Scenario[] = [];
  for (const doorbell of [false, true]) {
    for (const q of [0.5, 0.99]) {
      let rig: GuestServer;
      let native: SocatChain;
      out.push({
        name: `64-byte round trip p${q * 100}, host to guest echo, ${
          doorbell ? "doorbell" : "polling"
        } mode`,
        unit: "us",
        rounds: 3,
        async setup() {
          rig = await GuestServer.start("echo", 7, { doorbell });
          native = await SocatChain.start(rig.direct, {
            via: "unix",
            blockSize: NATIVE_BLOCK,
          });
        },
        async teardown() {
          await native?.stop();
          await rig?.stop();
        },
        subject: async () => quantile(await pingPong(rig.port, 2000), q),
        baselines: [{
          name: "direct TCP loopback round trip",
          run: async () => quantile(await pingPong(rig.direct, 2000), q),
          ...(q === 0.5 && !doorbell
            ? {
              target: {
                text: "p50 <= 3x TCP loopback (polling)",
                met: (x: number, b: number) => x <= 3 * b,
              },
            }
            : {}),
        }, {
          // No target: the same shape with native relays (see bulk).
          name: "socat TCP-UNIX-TCP relay pair round trip",
          run: async () => quantile(await pingPong(native.port, 2000), q),
        }],
      });
    }
  }
  return out;
}

/** Connection setup rate host to guest, one at a time and 64 at once. */
export function connectionScenarios(): Scenario[] {
  return [1, 64].map((parallel) => {
    let rig: GuestServer;
    return {
      name:
        `connection setup host to guest (connect, 1-byte echo, close), ${parallel} at a time`,
      unit: "conn/s",
      rounds: 3,
      async setup() {
        rig = await GuestServer.start("echo", 7);
      },
      teardown: () => rig?.stop(),
      subject: () => connectRate(rig.port, 1000, parallel),
      baselines: [{
        name: "direct TCP loopback",
        run: () => connectRate(rig.direct, 1000, parallel),
        target: {
          text: ">= 2000 connections/s",
          met: (x: number) => x >= 2000,
        },
      }],
    };
  });
}

/**
 * Memory per idle connection: 10,000 host-to-guest connections held open,
 * the sidecar's resident memory growth divided by 10,000; against the same
 * for a minimal Deno TCP relay holding 10,000 connections to the server.
 */
export function memoryScenarios(): Scenario[] {
  const COUNT = 10_000;
  // The relay holds two descriptors per connection, and this machine's hard
  // limit is 20,000 per process: it gets 9,000 (the figure is per
  // connection either way).
  const RELAY_COUNT = 9_000;
  let rig: GuestServer;
  return [{
    name: `sidecar memory per idle connection, ${COUNT} open`,
    unit: "KiB",
    rounds: 1,
    warmUp: false,
    async setup() {
      rig = await GuestServer.start("hold", 15, {
        maxConnections: COUNT + 100,
      });
    },
    teardown: () => rig?.stop(),
    subject: () =>
      perConnection(rig.stack.sidecar.process.pid, rig.port, COUNT),
    baselines: [{
      name: `minimal Deno TCP relay (${RELAY_COUNT} open)`,
      run: async () => {
        const relayPort = freePort();
        const relay = new Deno.Command(Deno.execPath(), {
          args: [
            "run",
            "--allow-net",
            new URL("./_relay.ts", import.meta.url).href,
            String(relayPort),
            String(rig.direct),
          ],
          stdout: "piped",
          stderr: "inherit",
        }).spawn();
        const reader = relay.stdout.getReader();
        await reader.read(); // "ready"
        try {
          return await perConnection(relay.pid, relayPort, RELAY_COUNT);
        } finally {
          relay.kill("SIGKILL");
          await relay.status;
          reader.releaseLock();
          await relay.stdout.cancel();
        }
      },
      target: {
        text: "<= 16 KiB per idle connection",
        met: (x: number) => x <= 16,
      },
    }],
  }];
}

async function perConnection(
  pid: number,
  port: number,
  count: number,
): Promise<number> {
  await new Promise((r) => setTimeout(r, 1000));
  const before = rssKiB(pid);
  const conns = await openIdle(port, count);
  await new Promise((r) => setTimeout(r, 2000)); // let allocation settle
  const after = rssKiB(pid);
  for (const c of conns) c.close();
  await new Promise((r) => setTimeout(r, 1000));
  return (after - before) / count;
}
