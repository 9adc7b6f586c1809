/**
 * WebSocket route: a path on a data-plane HTTP listener; each WebSocket
 * accepted there becomes one vsock connection to a guest port.
 *
 * @module
 */

import { type Context, upgradeWebSocket } from "../deps.ts";
import type { DataPlane } from "./data_plane.ts";
import {
  type RouteContext,
  RouteRuntime,
  type RouteStats,
} from "./route_runtime.ts";
import { WebSocketBridge } from "./ws_bridge.ts";
import type { RouteSpec } from "../config/schema.ts";

/** The subprotocol we accept when a client offers it (websockify's). */
const BINARY = "binary";

/**
 * hono/deno answers with the client's first offered subprotocol, whatever
 * it is; these options override that with none when "binary" was not
 * offered. (`protocol: undefined` must be present to override, which the
 * option type does not allow under exactOptionalPropertyTypes.)
 */
const NO_SUBPROTOCOL = {
  protocol: undefined,
} as unknown as Deno.UpgradeWebSocketOptions;

/** WebSocket path -> guest vsock port. */
export class WsRoute extends RouteRuntime {
  #plane: DataPlane;
  #address = "";

  constructor(
    spec: RouteSpec,
    ctx: RouteContext,
    plane: DataPlane,
    stats?: RouteStats,
  ) {
    super(spec, ctx, stats);
    this.#plane = plane;
  }

  get listening(): string {
    const from = this.spec.from;
    return from.type === "ws" ? `ws://${this.#address}${from.path}` : "";
  }

  start(): Promise<void> {
    const from = this.spec.from;
    if (from.type !== "ws") throw new TypeError("WsRoute needs a ws source");
    // A restart rebinds the port it had, not a new one for port 0.
    const port = this.#address === ""
      ? from.port
      : Number(this.#address.slice(this.#address.lastIndexOf(":") + 1));
    this.#address = this.#plane.add(from.host, port, from.path, {
      handle: (c) => this.#handle(c),
    });
    this.accepting = true;
    return Promise.resolve();
  }

  async stopAccepting(): Promise<void> {
    this.accepting = false;
    const from = this.spec.from;
    if (from.type === "ws") await this.#plane.remove(this.#address, from.path);
  }

  async #handle(c: Context): Promise<Response> {
    if (c.req.header("upgrade")?.toLowerCase() !== "websocket") {
      return c.json(
        { error: "this path accepts WebSocket upgrades only" },
        426,
      );
    }
    const info = (c.env as { remoteAddr?: Deno.NetAddr } | undefined)
      ?.remoteAddr;
    const remote = info ? `${info.hostname}:${info.port}` : "unknown";
    const pc = this.admit("websocket-to-guest", remote);
    if (pc === null) {
      return c.json({ error: "the route is not accepting connections" }, 503);
    }
    const offered = (c.req.header("sec-websocket-protocol") ?? "").split(",")
      .map((s) => s.trim());
    const to = this.spec.to;
    const limits = this.spec.limits;
    let wsBridge: WebSocketBridge | null = null;
    const middleware = upgradeWebSocket(() => ({
      onOpen: (_evt, ws) => {
        const socket = ws.raw as WebSocket;
        const b = new WebSocketBridge(socket, {
          idleTimeoutMs: limits.idleTimeoutMs,
        });
        wsBridge = b;
        if (to.type !== "vsock") return;
        pc.whileConnecting(() =>
          b.fail("closed by the proxy while connecting")
        );
        this.ctx.engine.connect(to.port, {
          type: to.socket,
          timeoutMs: limits.connectTimeoutMs,
        }).then(
          (vsock) => {
            if (pc.cancelled) {
              vsock.reset("closed by the administrator while connecting");
              this.cancelled(pc);
              return;
            }
            b.attach(vsock);
            pc.bind(vsock, () => b.close(), () => b.reset());
            this.track(pc, b.done);
          },
          (err) => {
            if (pc.cancelled) {
              this.cancelled(pc);
              return;
            }
            b.fail(`guest port ${to.port} unreachable`);
            this.abandon(
              pc,
              remote,
              `guest port ${to.port}: ${
                err instanceof Error ? err.message : err
              }`,
            );
          },
        );
      },
      onMessage: (evt) => wsBridge?.onMessage(evt.data),
      onClose: (evt) => wsBridge?.onClose(evt.code),
      onError: () => wsBridge?.onClose(1006),
    }), offered.includes(BINARY) ? { protocol: BINARY } : NO_SUBPROTOCOL);
    const response = await middleware(c, () => Promise.resolve());
    if (!(response instanceof Response)) {
      this.abandon(pc, remote, "WebSocket upgrade failed");
      return c.json({ error: "WebSocket upgrade failed" }, 400);
    }
    return response;
  }
}
