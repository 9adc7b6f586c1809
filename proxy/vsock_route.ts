/**
 * Guest-initiated route: the guest connects to the host (CID 2) on a vsock
 * port, and the sidecar opens a TCP connection to the route's target. The
 * guest reaches nothing that no route names: only ports with a route are
 * listened on, everything else is refused with RST.
 *
 * @module
 */

import type { VsockConnection } from "../device/vsock/connection.ts";
import type { VsockListener } from "../device/vsock/listener.ts";
import { bridge } from "./bridge.ts";
import { connectTcp, type FdConn } from "./fd_socket.ts";
import { hostPort, RouteRuntime } from "./route_runtime.ts";
import { closeQuietly } from "./tcp_streams.ts";

/** Guest vsock port -> TCP target. */
export class VsockRoute extends RouteRuntime {
  #listener: VsockListener | null = null;
  #loop: Promise<void> | null = null;

  get listening(): string {
    return this.spec.from.type === "vsock"
      ? `vsock:2:${this.spec.from.port}`
      : "";
  }

  start(): Promise<void> {
    const from = this.spec.from;
    if (from.type !== "vsock") {
      throw new TypeError("VsockRoute needs a vsock source");
    }
    this.#listener = this.ctx.engine.listen(from.port, {
      type: "stream",
      backlog: Math.min(1024, this.spec.limits.maxConnections),
    });
    this.accepting = true;
    this.#loop = this.#acceptLoop(this.#listener);
    return Promise.resolve();
  }

  async stopAccepting(): Promise<void> {
    this.accepting = false;
    this.#listener?.close();
    this.#listener = null;
    await this.#loop;
  }

  async #acceptLoop(listener: VsockListener): Promise<void> {
    for await (const conn of listener) this.#handle(conn);
  }

  async #handle(vsock: VsockConnection): Promise<void> {
    const to = this.spec.to;
    if (to.type !== "tcp") return;
    const target = hostPort(to.host, to.port);
    const pc = this.admit("guest-to-host", target);
    if (pc === null) {
      vsock.reset("refused by the route");
      return;
    }
    pc.whileConnecting(() =>
      vsock.reset("closed by the administrator while connecting")
    );
    let tcp: FdConn;
    try {
      tcp = await connectTcp(
        this.ctx.io,
        to.host,
        to.port,
        this.spec.limits.connectTimeoutMs,
      );
    } catch (err) {
      vsock.reset("target unreachable");
      if (pc.cancelled) {
        this.cancelled(pc);
        return;
      }
      this.abandon(
        pc,
        target,
        `TCP ${target}: ${err instanceof Error ? err.message : err}`,
      );
      return;
    }
    if (pc.cancelled) {
      closeQuietly(tcp);
      this.cancelled(pc);
      return;
    }
    tcp.setNoDelay(true);
    const b = bridge(vsock, tcp, {
      idleTimeoutMs: this.spec.limits.idleTimeoutMs,
    });
    pc.bind(vsock, b.close, b.reset);
    this.track(pc, b.done);
  }
}
