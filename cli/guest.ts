/**
 * `ivsock guest`: the guest agent (the driver side). Maps the region, runs
 * the transport, answers host routes on exposed vsock ports with guest-local
 * services, and forwards guest-local listeners to host vsock ports.
 *
 * @module
 */

import { mapFile, type MappedFile } from "../device/shm/shm_file.ts";
import { H, NOTIFY_MODE } from "../device/transport/layout.ts";
import {
  type Expose,
  type Forward,
  GuestAgent,
  type LocalTarget,
} from "../guest/agent.ts";
import { startDemoServices } from "../guest/demo_services.ts";
import { Doorbell, pickIvshmemDevice } from "../guest/pci.ts";
import {
  identityOfFd,
  type RegionFileState,
  regionFileState,
} from "../proxy/region_file.ts";
import {
  intOption,
  LOG_OPTIONS,
  logSettings,
  parse,
  untilSignal,
  UsageError,
} from "./args.ts";
import { makeLogger } from "./logger.ts";

/** How often file mode checks its device and the file at --region. */
const REGION_CHECK_MS = 1000;
/**
 * How long the device's heartbeat must stand still before file mode counts
 * the device on its mapping as gone: the driver's own device timeout
 * (docs/transport.md, section 4.9).
 */
const DEVICE_GONE_MS = 3000;

export const GUEST_HELP =
  `Usage: ivsock guest (--pci ADDRESS|auto | --region PATH) [options]

Runs the guest side of ivsock: maps the shared region, negotiates with the
device, and connects vsock ports to guest-local services.

Where the region is:
  --pci ADDRESS|auto     in a VM: the ivshmem PCI device (vendor 1af4, device
                         1110) at ADDRESS (e.g. 0000:00:04.0), or the only
                         one with "auto"; maps its BAR2 and, with
                         ivshmem-doorbell, rings the device through BAR0
  --region PATH          a file: a /dev/shm path shared with the host (the
                         simulated guest), or a BAR's resource2 by hand;
                         when the device on it is gone and PATH holds a new
                         file (the sidecar restarted), maps the new one

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
  --demo DIR             start the demo's services on UNIX sockets in DIR and
                         expose them: HTTP on vsock port 80, echo on 7, a
                         SHA-256 sink on 9 and a checksummed source on 19
  --log-format FORMAT    text (default) or json
  --log-level LEVEL      debug, info (default), warn or error
  --help                 show this message
`;

/** Runs `guest`; resolves to the exit code. */
export async function guest(args: string[]): Promise<number> {
  const values = parse("guest", args, {
    region: { type: "string" },
    pci: { type: "string" },
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
  if ((values.region === undefined) === (values.pci === undefined)) {
    throw new UsageError(
      "ivsock guest: give exactly one of --pci ADDRESS (or --pci auto) and --region PATH (see: ivsock guest --help)",
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

  const stopSignal = untilSignal((sig) =>
    log("info", `${sig}: already stopping`)
  );
  const opened = openRegion(values, log);
  const { doorbell, source } = opened;
  let mapping = opened.mapping;
  const region = mapping.region;
  // Ring only when the device asked for doorbells (ivshmem-plain ignores
  // doorbell writes, but there is no point making them).
  const ringDevice = doorbell === null ? undefined : (vector: number) => {
    if (region.load32(H.NOTIFY_MODE) === NOTIFY_MODE.DOORBELL) {
      doorbell.ring(region.load32(H.DEVICE_PEER), vector);
    }
  };
  let demo: ReturnType<typeof startDemoServices> | null = null;
  let agent: GuestAgent | null = null;
  let follower: { stop(): Promise<void> } | null = null;
  try {
    if (typeof values.demo === "string") {
      const info = () => ({
        agent: "ivsock guest",
        source,
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
      exposes.push({
        port: 9,
        target: { kind: "unix", path: demo.sinkSocket },
      });
      exposes.push({
        port: 19,
        target: { kind: "unix", path: demo.sourceSocket },
      });
    }
    const startAgent = (on: MappedFile) =>
      GuestAgent.start({
        region: on.region,
        exposes,
        forwards,
        transport: {
          queueSize,
          rxBufferSize,
          mergeable: values["no-mergeable"] !== true,
          ...(doorbell === null ? {} : { driverPeer: doorbell.position }),
        },
        ...(ringDevice === undefined ? {} : { ringDevice }),
        log,
      });
    agent = await startAgent(mapping);
    log("info", `guest agent started on ${source}`, {
      exposes: exposes.map((e) => e.port),
      forwards: forwards.map((f) => f.port),
    });
    if (typeof values.region === "string") {
      follower = followRegionFile(values.region, {
        mapping: () => mapping,
        log,
        async reopen(next) {
          await agent?.stop(0);
          agent = null;
          mapping.close();
          mapping = next;
          agent = await startAgent(next);
        },
      });
    }
    const signal = await stopSignal;
    log("info", `${signal}: stopping`);
  } finally {
    await follower?.stop();
    await agent?.stop(2000);
    await demo?.close();
    doorbell?.close();
    mapping.close();
  }
  return 0;
}

/**
 * File mode (--region) follows the region file. A sidecar that stops removes
 * its region and its next start creates a new file at the same path; our
 * mapping would keep the old, orphaned file forever. So once the device on
 * our mapping is gone (its heartbeat still for {@linkcode DEVICE_GONE_MS})
 * and the path holds a different file, `reopen` maps the new file and
 * restarts the agent on it. A file removed while its device still runs is
 * only reported: the mapping keeps working, and the device may come back
 * on it (a restart over the same file).
 */
function followRegionFile(
  path: string,
  o: {
    mapping: () => MappedFile;
    log: ReturnType<typeof makeLogger>;
    reopen: (next: MappedFile) => Promise<void>;
  },
): { stop(): Promise<void> } {
  let identity = identityOfFd(o.mapping().fd);
  let state: RegionFileState = "present";
  let beat = o.mapping().region.load32(H.DEVICE_HEARTBEAT);
  let beatAt = Date.now();
  const check = async () => {
    const b = o.mapping().region.load32(H.DEVICE_HEARTBEAT);
    if (b !== beat) {
      beat = b;
      beatAt = Date.now();
    }
    let now: RegionFileState;
    try {
      now = regionFileState(path, identity);
    } catch {
      return; // cannot tell (a permission error, say): look again later
    }
    if (now !== state) {
      state = now;
      if (now !== "present") {
        o.log(
          "warn",
          `the region file ${path} was ${now}: keeping the mapping while the device on it runs; a new file at the path is mapped once that device is gone`,
        );
      }
    }
    if (now !== "replaced" || Date.now() - beatAt < DEVICE_GONE_MS) return;
    let next: MappedFile;
    try {
      next = mapFile(path);
    } catch {
      return; // still being created (no size yet): next time
    }
    o.log(
      "warn",
      `the device on the old region is gone and ${path} is a new file: re-opening it`,
    );
    await o.reopen(next);
    identity = identityOfFd(next.fd);
    state = "present";
    beat = next.region.load32(H.DEVICE_HEARTBEAT);
    beatAt = Date.now();
  };
  let busy: Promise<void> | null = null;
  const timer = setInterval(() => {
    busy ??= check().catch((err) =>
      o.log(
        "error",
        `cannot re-open ${path}, trying again: ${
          err instanceof Error ? err.message : err
        }`,
      )
    ).finally(() => (busy = null));
  }, REGION_CHECK_MS);
  return {
    async stop() {
      clearInterval(timer);
      await busy;
    },
  };
}

/** Maps the region from --pci or --region. @throws {UsageError} */
function openRegion(
  values: Record<string, unknown>,
  log: ReturnType<typeof makeLogger>,
): { mapping: MappedFile; doorbell: Doorbell | null; source: string } {
  const message = (
    err: unknown,
  ) => (err instanceof Error ? err.message : String(err));
  if (typeof values.pci === "string") {
    let device;
    let mapping;
    try {
      device = pickIvshmemDevice(values.pci);
      mapping = mapFile(device.memory);
    } catch (err) {
      throw new UsageError(`ivsock guest: --pci: ${message(err)}`);
    }
    let doorbell: Doorbell | null = null;
    try {
      doorbell = new Doorbell(device.registers);
    } catch (err) {
      log(
        "warn",
        `cannot map the doorbell registers (${
          message(err)
        }); the device will poll`,
      );
    }
    return { mapping, doorbell, source: `PCI ${device.address}` };
  }
  const path = values.region as string;
  try {
    return { mapping: mapFile(path), doorbell: null, source: path };
  } catch (err) {
    throw new UsageError(`ivsock guest: --region ${path}: ${message(err)}`);
  }
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
