/**
 * Host-initiated route: a TCP listener on the host; each accepted TCP
 * connection becomes one vsock connection to a guest port.
 *
 * @module
 */

import { VsockError } from "../device/vsock/errors.ts";
import { bridge } from "./bridge.ts";
import { hostPort, RouteRuntime } from "./route_runtime.ts";
import { acceptEach, closeQuietly } from "./tcp_streams.ts";

/** TCP listener -> guest vsock port. */
export class TcpRoute extends RouteRuntime {
  #listener: Deno.TcpListener | null = null;
  #loop: Promise<void> | null = null;
  /** The port bound last, so a restart rebinds it (not a new one for port 0). */
  #boundPort: number | null = null;

  get listening(): string {
    if (this.spec.from.type !== "tcp") return "";
    return hostPort(
      this.spec.from.host,
      this.#boundPort ?? this.spec.from.port,
    );
  }

  start(): Promise<void> {
    const from = this.spec.from;
    if (from.type !== "tcp") throw new TypeError("TcpRoute needs a tcp source");
    this.#listener = Deno.listen({
      hostname: from.host,
      port: this.#boundPort ?? from.port,
      transport: "tcp",
    });
    this.#boundPort = this.#listener.addr.port;
    this.accepting = true;
    this.#loop = this.#acceptLoop(this.#listener);
    return Promise.resolve();
  }

  async stopAccepting(): Promise<void> {
    this.accepting = false;
    if (this.#listener !== null) {
      closeQuietly(this.#listener);
      this.#listener = null;
    }
    await this.#loop;
  }

  #acceptLoop(listener: Deno.TcpListener): Promise<void> {
    return acceptEach(
      listener,
      (conn) => this.#handle(conn),
      this.ctx.log,
      `route ${this.name}`,
    );
  }

  async #handle(tcp: Deno.TcpConn): Promise<void> {
    const a = tcp.remoteAddr;
    const remote = hostPort(a.hostname, a.port);
    const pc = this.admit("host-to-guest", remote);
    if (pc === null) {
      closeQuietly(tcp);
      return;
    }
    tcp.setNoDelay(true);
    const to = this.spec.to;
    if (to.type !== "vsock") return;
    pc.whileConnecting(() => closeQuietly(tcp));
    let vsock;
    try {
      vsock = await this.ctx.engine.connect(to.port, {
        type: to.socket,
        timeoutMs: this.spec.limits.connectTimeoutMs,
      });
    } catch (err) {
      closeQuietly(tcp);
      if (pc.cancelled) {
        this.cancelled(pc);
        return;
      }
      this.abandon(
        pc,
        remote,
        `guest port ${to.port}: ${
          err instanceof VsockError ? err.message : err
        }`,
      );
      return;
    }
    if (pc.cancelled) {
      vsock.reset("closed by the administrator while connecting");
      this.cancelled(pc);
      return;
    }
    const b = bridge(vsock, tcp, {
      idleTimeoutMs: this.spec.limits.idleTimeoutMs,
    });
    pc.bind(vsock, b.close, b.reset);
    this.track(pc, b.done);
  }
}
