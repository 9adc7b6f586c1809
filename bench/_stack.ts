/**
 * The ivsock stack as benchmarks run it: the sidecar (`mod.ts serve`, the
 * real CLI) and the guest agent, each its own process, plus a process of
 * loopback TCP servers. Everything is torn down by `stop()`.
 *
 * @module
 */

import { Child } from "../tests/_support/child.ts";
import { exists } from "../tests/_support/exists.ts";

const SERVE = new URL(
  Deno.env.get("IVSOCK_BENCH_SERVE") ?? "../mod.ts",
  import.meta.url,
);
const GUEST = new URL("./_guest.ts", import.meta.url);
const SERVERS = new URL("./_servers.ts", import.meta.url);
const BLOCKING_SERVER = new URL("./_blocking_servers.ts", import.meta.url);
const START_MS = 30_000;

/**
 * `IVSOCK_BENCH_PROFILE=DIR` runs the sidecar and the guest agent with
 * `--cpu-prof` into DIR: how docs/performance.md's profiles were taken.
 */
const PROFILE_DIR = Deno.env.get("IVSOCK_BENCH_PROFILE");
const PROFILE_FLAGS = PROFILE_DIR
  ? ["--cpu-prof", `--cpu-prof-dir=${PROFILE_DIR}`]
  : [];

/** Loopback servers in their own process. */
export class Servers {
  readonly ports: Record<string, number>;
  #child: Child;

  private constructor(child: Child, ports: Record<string, number>) {
    this.#child = child;
    this.ports = ports;
  }

  /**
   * `blocking`: one server of blocking system calls instead
   * (`_blocking_servers.ts`), one connection at a time; `kinds` must then
   * be a single echo or sink.
   */
  static async start(kinds: string[], blocking = false): Promise<Servers> {
    if (blocking && kinds.length !== 1) {
      throw new Error("a blocking server process serves one kind");
    }
    const child = blocking
      ? new Child("blocking server", BLOCKING_SERVER, kinds)
      : new Child("servers", SERVERS, kinds);
    const line = await child.waitFor((l) => l.startsWith("ready"), START_MS);
    const ports = Object.fromEntries(
      line.split(" ").slice(1).map((kv) => {
        const [k, v] = kv.split("=");
        return [k!, Number(v)];
      }),
    );
    return new Servers(child, ports);
  }

  get pid(): number {
    return this.#child.process.pid;
  }

  async stop(): Promise<void> {
    await this.#child.stop("SIGKILL");
  }
}

/** How to set the stack up. */
export interface StackOptions {
  /** Routes as in the config file. */
  routes: unknown[];
  /** The guest's exposes: vsock port -> loopback TCP port. */
  exposes?: Array<{ port: number; tcpPort: number }>;
  /** The guest's forwards: a local listener each -> host vsock port. */
  forwards?: Array<{ port: number }>;
  /** Vsock ports the agent process answers with a sink of its own. */
  sinks?: number[];
  mergeable?: boolean;
  rxBufferSize?: number;
  queueSize?: number;
  /** Doorbell mode: the sidecar serves the ivshmem protocol, the guest is its client. */
  doorbell?: boolean;
  bufAlloc?: number;
}

/** A running sidecar and guest agent. */
export class Stack {
  readonly sidecar: Child;
  readonly guest: Child;
  /** The guest's forward listener ports, in option order. */
  readonly forwardPorts: number[];
  /** The agent process's control port (bench/_guest.ts). */
  readonly controlPort: number;
  #dir: string;

  private constructor(
    sidecar: Child,
    guest: Child,
    forwardPorts: number[],
    controlPort: number,
    dir: string,
  ) {
    this.sidecar = sidecar;
    this.guest = guest;
    this.forwardPorts = forwardPorts;
    this.controlPort = controlPort;
    this.#dir = dir;
  }

  /**
   * Runs the bulk client in the agent process, over vsock to host port
   * `port` or over TCP loopback to `port`; returns its MiB/s.
   */
  async guestBulk(
    over: "vsock" | "tcp",
    port: number,
    mib: number,
  ): Promise<number> {
    const c = await Deno.connect({
      hostname: "127.0.0.1",
      port: this.controlPort,
    });
    let text = "";
    try {
      await c.write(new TextEncoder().encode(`bulk ${over} ${port} ${mib}\n`));
      const buf = new Uint8Array(256);
      for (;;) {
        const n = await c.read(buf);
        if (n === null) break;
        text += new TextDecoder().decode(buf.subarray(0, n));
      }
    } finally {
      c.close();
    }
    const [status, ...rest] = text.trim().split(" ");
    if (status !== "ok") throw new Error(`guest bulk: ${text.trim()}`);
    return Number(rest[0]);
  }

  static async start(o: StackOptions): Promise<Stack> {
    const dir = await Deno.makeTempDir({ prefix: "ivsock-bench-" });
    const region = `/dev/shm/ivsock-bench-${Deno.pid}-${
      Math.random().toString(36).slice(2, 8)
    }`;
    const socket = `${dir}/ivshmem.sock`;
    const config = {
      device: {
        region,
        size: "16MiB",
        ...(o.doorbell ? { doorbell: { socket, vectors: 2 } } : {}),
        ...(o.bufAlloc ? { bufAlloc: o.bufAlloc } : {}),
      },
      routes: o.routes,
      admin: false,
      log: { level: "warn" },
      shutdownGraceMs: 0,
    };
    await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(config));
    const sidecar = new Child(
      "sidecar",
      SERVE,
      ["serve", "--config", `${dir}/config.json`, "--log-level", "info"],
      {},
      "stderr",
      PROFILE_FLAGS,
    );
    try {
      await sidecar.waitFor((l) => l.includes("device ready"), START_MS);
      const guest = new Child(
        "guest",
        GUEST,
        [JSON.stringify({
          ...(o.doorbell ? { ivshmemSocket: socket } : { region }),
          exposes: o.exposes ?? [],
          forwards: o.forwards ?? [],
          sinks: o.sinks ?? [],
          mergeable: o.mergeable ?? true,
          rxBufferSize: o.rxBufferSize ?? 4096,
          queueSize: o.queueSize ?? 256,
        })],
        {},
        "stdout",
        PROFILE_FLAGS,
      );
      const line = await guest.waitFor((l) => l.startsWith("ready"), START_MS)
        .catch(async (err) => {
          await guest.stop("SIGKILL");
          throw err;
        });
      const pairs = line.split(" ").slice(1).map((kv) => kv.split("="));
      const forwards = pairs.filter(([k]) => k === "forward").map(([, v]) =>
        Number(v)
      );
      const control = Number(pairs.find(([k]) => k === "control")?.[1]);
      return new Stack(sidecar, guest, forwards, control, dir);
    } catch (err) {
      await sidecar.stop("SIGKILL");
      await Deno.remove(dir, { recursive: true }).catch(() => {});
      throw err;
    }
  }

  /** The port a route with a TCP listener ended up on (from the sidecar's route log). */
  async stop(): Promise<void> {
    await this.guest.stop("SIGTERM");
    await this.sidecar.stop("SIGTERM");
    await Deno.remove(this.#dir, { recursive: true }).catch(() => {});
  }
}

/**
 * A loopback server of `kind` (in its own process) that the guest exposes
 * on vsock port `vsockPort`, reached from the host through a TCP route:
 * `port` goes through ivsock, `direct` straight to the server.
 */
export class GuestServer {
  private constructor(
    readonly servers: Servers,
    readonly stack: Stack,
    readonly port: number,
    readonly direct: number,
  ) {}

  static async start(
    kind: "echo" | "hold",
    vsockPort: number,
    o: { doorbell?: boolean; maxConnections?: number; blocking?: boolean } = {},
  ): Promise<GuestServer> {
    const servers = await Servers.start([kind], o.blocking ?? false);
    const port = freePort();
    const stack = await Stack.start({
      routes: [{
        name: kind,
        from: { type: "tcp", port },
        to: { type: "vsock", port: vsockPort },
        ...(o.maxConnections === undefined
          ? {}
          : { limits: { maxConnections: o.maxConnections } }),
      }],
      exposes: [{ port: vsockPort, tcpPort: servers.ports[kind]! }],
      ...(o.doorbell === undefined ? {} : { doorbell: o.doorbell }),
    });
    return new GuestServer(servers, stack, port, servers.ports[kind]!);
  }

  async stop(): Promise<void> {
    await this.stack.stop();
    await this.servers.stop();
  }
}

/** Resident memory of `pid` in KiB (VmRSS). */
export function rssKiB(pid: number): number {
  const status = Deno.readTextFileSync(`/proc/${pid}/status`);
  return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? NaN);
}

/** A free loopback port (closed again at once). */
export function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

/**
 * Two chained socat relays in front of `port`; returns the front port.
 *
 * By default (what people run today) both legs are TCP and socat uses its
 * 8 KiB blocks. With `via: "unix"` the relays talk over a UNIX socket
 * instead, in `blockSize` blocks: the shape of ivsock's own path (a TCP leg
 * into one process, a local channel to a second, a TCP leg out) with
 * native relays and no ring, the ceiling for that shape on the machine.
 */
export class SocatChain {
  readonly port: number;
  #procs: Deno.ChildProcess[];
  #dir: string | null;

  private constructor(
    port: number,
    procs: Deno.ChildProcess[],
    dir: string | null,
  ) {
    this.port = port;
    this.#procs = procs;
    this.#dir = dir;
  }

  static async start(
    target: number,
    o: { via?: "tcp" | "unix"; blockSize?: number } = {},
  ): Promise<SocatChain> {
    const front = freePort();
    const block = o.blockSize === undefined ? [] : ["-b", String(o.blockSize)];
    const dir = o.via === "unix"
      ? await Deno.makeTempDir({ prefix: "ivsock-bench-socat-" })
      : null;
    // Built as they start, so that a relay that fails to start does not
    // leave the others running (or the socket's directory behind).
    const chain = new SocatChain(front, [], dir);
    const spawn = (from: string, to: string) => {
      try {
        chain.#procs.push(
          new Deno.Command("socat", {
            args: [...block, from, to],
            stdout: "null",
            stderr: "null",
          }).spawn(),
        );
      } catch (err) {
        if (err instanceof Deno.errors.NotFound) {
          throw new Error(
            "socat is not installed; the socat baselines need it (Debian: apt-get install socat)",
          );
        }
        throw err;
      }
    };
    const listen = (port: number) =>
      `TCP-LISTEN:${port},bind=127.0.0.1,fork,reuseaddr`;
    try {
      if (dir !== null) {
        const path = `${dir}/relay.sock`;
        spawn(`UNIX-LISTEN:${path},fork`, `TCP:127.0.0.1:${target}`);
        await waitFor(() => exists(path));
        spawn(listen(front), `UNIX-CONNECT:${path}`);
        await waitListening(front);
      } else {
        const middle = freePort();
        spawn(listen(middle), `TCP:127.0.0.1:${target}`);
        spawn(listen(front), `TCP:127.0.0.1:${middle}`);
        for (const port of [middle, front]) await waitListening(port);
      }
      return chain;
    } catch (err) {
      await chain.stop();
      throw err;
    }
  }

  async stop(): Promise<void> {
    for (const p of this.#procs) {
      try {
        p.kill("SIGKILL");
      } catch {
        // Gone.
      }
      await p.status;
    }
    if (this.#dir !== null) await Deno.remove(this.#dir, { recursive: true });
  }
}

/** Resolves once `ready()` holds, polling. */
async function waitFor(ready: () => boolean, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!ready()) {
    if (Date.now() > deadline) throw new Error("timed out waiting");
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Resolves once something accepts connections on `port`. */
export async function waitListening(port: number, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      const c = await Deno.connect({ hostname: "127.0.0.1", port });
      c.close();
      return;
    } catch {
      if (Date.now() > deadline) throw new Error(`nothing listens on ${port}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}
