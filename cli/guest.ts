/**
 * `ivsock guest`: the guest agent (the driver side). Maps the region, runs
 * the transport, answers host routes on exposed vsock ports with guest-local
 * services, and forwards guest-local listeners to host vsock ports.
 *
 * @module
 */

import { mapFile, type MappedFile } from "../device/shm/shm_file.ts";
import {
  type Expose,
  type Forward,
  GuestAgent,
  type LocalTarget,
} from "../guest/agent.ts";
import { startDemoServices } from "../guest/demo_services.ts";
import {
  intOption,
  LOG_OPTIONS,
  logSettings,
  parse,
  untilSignal,
  UsageError,
} from "./args.ts";
import { makeLogger } from "./logger.ts";

export const GUEST_HELP = `Usage: ivsock guest --region PATH [options]

Runs the guest side of ivsock: maps the shared region, negotiates with the
device, and connects vsock ports to guest-local services.

Where the region is:
  --region PATH          a file: a /dev/shm path shared with the host (the
                         simulated guest), or a PCI BAR's resource2 in a VM

Mappings (repeatable):
  --expose PORT=TARGET   answer vsock port PORT with a local service; TARGET
                         is HOST:PORT (TCP) or unix:PATH
  --forward [HOST:]PORT=VPORT
                         listen on guest-local TCP HOST:PORT (default host
                         127.0.0.1) and forward each connection to the host's
                         vsock port VPORT (a guest-initiated route there)

Transport:
  --queue-size N         descriptors per queue, power of two (default 256)
  --rx-buffer-size N     bytes per receive buffer (default 4096)
  --no-mergeable         do not negotiate mergeable receive buffers

Other:
  --demo DIR             start the demo's HTTP and echo services on UNIX
                         sockets in DIR and expose them on vsock ports 80 and 7
  --log-format FORMAT    text (default) or json
  --log-level LEVEL      debug, info (default), warn or error
  --help                 show this message
`;

/** Runs `guest`; resolves to the exit code. */
export async function guest(args: string[]): Promise<number> {
  const values = parse("guest", args, {
    region: { type: "string" },
    expose: { type: "string", multiple: true },
    forward: { type: "string", multiple: true },
    "queue-size": { type: "string" },
    "rx-buffer-size": { type: "string" },
    "no-mergeable": { type: "boolean" },
    demo: { type: "string" },
    help: { type: "boolean" },
    ...LOG_OPTIONS,
  });
  if (values.help) {
    console.log(GUEST_HELP);
    return 0;
  }
  if (typeof values.region !== "string") {
    throw new UsageError(
      "ivsock guest: --region PATH is required (see: ivsock guest --help)",
    );
  }
  const exposes = ((values.expose ?? []) as string[]).map(parseExpose);
  const forwards = ((values.forward ?? []) as string[]).map(parseForward);
  const queueSize = intOption(
    "guest",
    "queue-size",
    values["queue-size"],
    1,
    32768,
    256,
  );
  if ((queueSize & (queueSize - 1)) !== 0) {
    throw new UsageError(
      `ivsock guest: --queue-size: expected a power of two, received ${queueSize}`,
    );
  }
  const rxBufferSize = intOption(
    "guest",
    "rx-buffer-size",
    values["rx-buffer-size"],
    46,
    65536 + 46,
    4096,
  );
  const log = makeLogger({
    ...logSettings("guest", values),
    base: { role: "guest" },
  });

  let mapping: MappedFile;
  try {
    mapping = mapFile(values.region);
  } catch (err) {
    throw new UsageError(
      `ivsock guest: --region ${values.region}: ${
        err instanceof Error ? err.message : err
      }`,
    );
  }
  let demo: Awaited<ReturnType<typeof startDemoServices>> | null = null;
  let agent: GuestAgent | null = null;
  try {
    if (typeof values.demo === "string") {
      const info = () => ({
        agent: "ivsock guest (simulated)",
        connections: agent?.engine.connectionCount ?? 0,
      });
      demo = startDemoServices(values.demo, info);
      exposes.push({
        port: 80,
        target: { kind: "unix", path: demo.httpSocket },
      });
      exposes.push({
        port: 7,
        target: { kind: "unix", path: demo.echoSocket },
      });
    }
    agent = await GuestAgent.start({
      region: mapping.region,
      exposes,
      forwards,
      transport: {
        queueSize,
        rxBufferSize,
        mergeable: values["no-mergeable"] !== true,
      },
      log,
    });
    log("info", `guest agent started on ${values.region}`, {
      exposes: exposes.map((e) => e.port),
      forwards: forwards.map((f) => f.port),
    });
    const signal = await untilSignal((sig) =>
      log("info", `${sig}: already stopping`)
    );
    log("info", `${signal}: stopping`);
  } finally {
    await agent?.stop(2000);
    await demo?.close();
    mapping.close();
  }
  return 0;
}

function parseExpose(text: string): Expose {
  const m = /^(\d+)=(.+)$/.exec(text);
  if (!m) {
    throw new UsageError(
      `ivsock guest: --expose: expected PORT=HOST:PORT or PORT=unix:PATH, received ${
        JSON.stringify(text)
      }`,
    );
  }
  const port = Number(m[1]);
  if (port > 0xfffffffe) {
    throw new UsageError(
      `ivsock guest: --expose: vsock port must be at most 4294967294, received ${port}`,
    );
  }
  return { port, target: parseTarget(m[2]!, text) };
}

function parseTarget(t: string, whole: string): LocalTarget {
  if (t.startsWith("unix:")) {
    if (t.length === 5) {
      throw new UsageError(
        `ivsock guest: --expose: empty UNIX socket path in ${
          JSON.stringify(whole)
        }`,
      );
    }
    return { kind: "unix", path: t.slice(5) };
  }
  const m = /^(.+):(\d+)$/.exec(t);
  const port = m ? Number(m[2]) : NaN;
  if (!m || port < 1 || port > 65535) {
    throw new UsageError(
      `ivsock guest: --expose: expected HOST:PORT with a port from 1 to 65535, received ${
        JSON.stringify(t)
      }`,
    );
  }
  return { kind: "tcp", host: m[1]!.replace(/^\[(.*)\]$/, "$1"), port };
}

function parseForward(text: string): Forward {
  const m = /^(?:(.+):)?(\d+)=(\d+)$/.exec(text);
  const tcpPort = m ? Number(m[2]) : NaN;
  const vport = m ? Number(m[3]) : NaN;
  if (!m || tcpPort < 0 || tcpPort > 65535 || vport > 0xfffffffe) {
    throw new UsageError(
      `ivsock guest: --forward: expected [HOST:]PORT=VSOCKPORT, received ${
        JSON.stringify(text)
      }`,
    );
  }
  return { listen: { host: m[1] ?? "127.0.0.1", port: tcpPort }, port: vport };
}
