/**
 * The guest agent: the driver side of the transport plus a vsock engine, and
 * the guest's own two kinds of mapping:
 *
 * - expose: a vsock port on the guest, answered by a guest-local service
 *   (a TCP `host:port`, or a UNIX socket): what host routes connect to;
 * - forward: a guest-local TCP listener whose connections go to a host
 *   vsock port (CID 2), where a guest-initiated host route picks them up.
 *
 * @module
 */

import type { LogFn } from "../device/log.ts";
import { silentLog } from "../device/log.ts";
import { IoPoller } from "../device/notify/io_poller.ts";
import type { Region } from "../device/shm/region.ts";
import {
  DriverTransport,
  type DriverTransportOptions,
} from "../device/transport/driver_transport.ts";
import { DriverRunner } from "../device/transport/driver_runner.ts";
import type { VsockConnection } from "../device/vsock/connection.ts";
import { VsockEngine } from "../device/vsock/engine.ts";
import type { VsockListener } from "../device/vsock/listener.ts";
import { DriverEnginePort } from "../device/vsock/transport_ports.ts";
import { bridge } from "../proxy/bridge.ts";
import {
  connectTcp,
  connectUnix,
  type FdConn,
  FdListener,
} from "../proxy/fd_socket.ts";
import { closeQuietly } from "../proxy/tcp_streams.ts";

/** Where a guest-local service listens. */
export type LocalTarget =
  | { kind: "tcp"; host: string; port: number }
  | { kind: "unix"; path: string };

/** vsock port -> guest-local service. */
export interface Expose {
  port: number;
  target: LocalTarget;
}

/** Guest-local TCP listener -> host vsock port. */
export interface Forward {
  listen: { host: string; port: number };
  port: number;
}

/** Options of {@linkcode GuestAgent.start}. */
export interface GuestAgentOptions {
  region: Region;
  exposes?: Expose[];
  forwards?: Forward[];
  transport?: DriverTransportOptions;
  /** Rings the device (doorbell mode). */
  ringDevice?: (vector: number) => void;
  /** Eventfds the device rings us on (a simulated guest). */
  doorbells?: number[];
  connectTimeoutMs?: number;
  log?: LogFn;
}

/** A running guest agent. */
export class GuestAgent {
  readonly engine: VsockEngine;
  readonly runner: DriverRunner;
  #io: IoPoller;
  #listeners: VsockListener[] = [];
  #tcpListeners: FdListener[] = [];
  #loops: Promise<void>[] = [];
  #bridges = new Set<Promise<unknown>>();
  #log: LogFn;
  #connectTimeoutMs: number;
  #running: Promise<void>;

  private constructor(o: GuestAgentOptions) {
    this.#log = o.log ?? silentLog;
    this.#connectTimeoutMs = o.connectTimeoutMs ?? 2000;
    this.engine = new VsockEngine({ log: this.#log });
    this.#io = new IoPoller();
    const transport = new DriverTransport(o.region, {
      ...o.transport,
      log: this.#log,
      ...(o.ringDevice ? { ringDevice: o.ringDevice } : {}),
    });
    this.runner = new DriverRunner(
      transport,
      new DriverEnginePort(this.engine),
      {
        log: this.#log,
        io: this.#io,
        ...(o.ringDevice ? { ringDevice: o.ringDevice } : {}),
        ...(o.doorbells ? { doorbells: o.doorbells } : {}),
      },
    );
    this.engine.setKick(() => this.runner.kick());
    this.#running = this.runner.run();
  }

  /**
   * Starts the driver and every mapping.
   *
   * @throws when a vsock port or local listener cannot be opened (the
   * agent is stopped again first).
   */
  static async start(options: GuestAgentOptions): Promise<GuestAgent> {
    const agent = new GuestAgent(options);
    try {
      for (const e of options.exposes ?? []) agent.#expose(e);
      for (const f of options.forwards ?? []) await agent.#forward(f);
    } catch (err) {
      await agent.stop(0);
      throw err;
    }
    return agent;
  }

  /** Resolves once the transport is up (or rejects after `timeoutMs`). */
  async ready(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!this.engine.active) {
      if (Date.now() > deadline) {
        throw new Error(`the transport did not come up within ${timeoutMs} ms`);
      }
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  /** Stops accepting, gives open connections `graceMs`, then resets them. */
  async stop(graceMs: number): Promise<void> {
    for (const l of this.#listeners) l.close();
    for (const l of this.#tcpListeners) l.close();
    await Promise.all(this.#loops);
    const deadline = Date.now() + graceMs;
    while (this.#bridges.size > 0 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 20));
    }
    this.engine.close();
    // Aborted bridges end promptly; bound the wait in case a local socket
    // does not notice.
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([
      Promise.all(this.#bridges),
      new Promise((r) => (timer = setTimeout(r, 1000))),
    ]);
    clearTimeout(timer);
    await this.runner.stop();
    await this.#running;
    this.#io.close();
  }

  #expose(e: Expose): void {
    const listener = this.engine.listen(e.port);
    this.#listeners.push(listener);
    this.#loops.push((async () => {
      for await (const conn of listener) this.#serve(conn, e.target);
    })());
  }

  async #serve(vsock: VsockConnection, target: LocalTarget): Promise<void> {
    let local: FdConn;
    try {
      local = target.kind === "tcp"
        ? await connectTcp(
          this.#io,
          target.host,
          target.port,
          this.#connectTimeoutMs,
        )
        : await connectUnix(this.#io, target.path, this.#connectTimeoutMs);
    } catch (err) {
      this.#log(
        "warn",
        `vsock port ${vsock.localPort}: cannot reach ${describe(target)}: ${
          err instanceof Error ? err.message : err
        }`,
      );
      vsock.reset("local service unreachable");
      return;
    }
    this.#track(vsock, local);
  }

  async #forward(f: Forward): Promise<void> {
    const what = `forward to host vsock port ${f.port}`;
    const listener = await FdListener.listen(
      this.#io,
      f.listen.host,
      f.listen.port,
      {
        onConnection: (tcp) => void this.#connectOut(tcp, f.port),
        onError: (err) =>
          this.#log("warn", `${what}: accept failed, retrying: ${err.message}`),
      },
    );
    this.#tcpListeners.push(listener);
  }

  async #connectOut(tcp: FdConn, port: number): Promise<void> {
    let vsock: VsockConnection;
    try {
      vsock = await this.engine.connect(port, {
        timeoutMs: this.#connectTimeoutMs,
      });
    } catch (err) {
      this.#log(
        "warn",
        `forward to host vsock port ${port}: ${
          err instanceof Error ? err.message : err
        }`,
      );
      closeQuietly(tcp);
      return;
    }
    this.#track(vsock, tcp);
  }

  #track(vsock: VsockConnection, local: FdConn): void {
    local.setNoDelay(true);
    const b = bridge(vsock, local);
    const done = b.done.finally(() => this.#bridges.delete(done));
    this.#bridges.add(done);
  }
}

function describe(t: LocalTarget): string {
  return t.kind === "tcp" ? `${t.host}:${t.port}` : `unix:${t.path}`;
}
