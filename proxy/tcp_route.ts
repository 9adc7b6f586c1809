/**
 * Host-initiated route: a TCP listener on the host; each accepted TCP
 * connection becomes one vsock connection to a guest port.
 *
 * @module
 */

import { VsockError } from "../device/vsock/errors.ts";
import { bridge } from "./bridge.ts";
import { type FdConn, FdListener } from "./fd_socket.ts";
import { hostPort, RouteRuntime } from "./route_runtime.ts";
import { closeQuietly } from "./tcp_streams.ts";

/** TCP listener -> guest vsock port. */
export class TcpRoute extends RouteRuntime {
  #listener: FdListener | null = null;
  /** The port bound last, so a restart rebinds it (not a new one for port 0). */
  #boundPort: number | null = null;

  get listening(): string {
    if (this.spec.from.type !== "tcp") return "";
    return hostPort(
      this.spec.from.host,
      this.#boundPort ?? this.spec.from.port,
    );
  }

  async start(): Promise<void> {
    const from = this.spec.from;
    if (from.type !== "tcp") throw new TypeError("TcpRoute needs a tcp source");
    this.#listener = await FdListener.listen(
      this.ctx.io,
      from.host,
      this.#boundPort ?? from.port,
      {
        onConnection: (conn) => void this.#handle(conn),
        onError: (err) =>
          this.ctx.log(
            "warn",
            `route ${this.name}: accept failed, retrying: ${err.message}`,
          ),
      },
    );
    this.#boundPort = this.#listener.addr.port;
    this.accepting = true;
  }

  stopAccepting(): Promise<void> {
    this.accepting = false;
    this.#listener?.close();
    this.#listener = null;
    return Promise.resolve();
  }

  async #handle(tcp: FdConn): Promise<void> {
    const a = tcp.remoteAddr;
    const remote = a.transport === "tcp" ? hostPort(a.hostname, a.port) : "?";
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
