/**
 * What every route kind shares: its spec, whether it is enabled, its limits,
 * the connections it carries and its counters.
 *
 * @module
 */

import type { LogFn } from "../device/log.ts";
import type { IoPoller } from "../device/notify/io_poller.ts";
import type { VsockEngine } from "../device/vsock/engine.ts";
import type { RouteSpec } from "../config/schema.ts";
import type { BridgeOutcome } from "./bridge.ts";
import type { EventBus } from "./events.ts";
import { type Direction, ProxyConnection } from "./proxy_connection.ts";

/** What routes need from the sidecar. */
export interface RouteContext {
  engine: VsockEngine;
  /** Where TCP routes' sockets are watched: the device loop serves it. */
  io: IoPoller;
  events: EventBus;
  log: LogFn;
}

/** Counters of one route, for the API and /metrics. */
export interface RouteStats {
  accepted: number;
  /** Connections refused, by reason (limit, disabled, connect). */
  rejected: Record<string, number>;
  /** Connections ended, by outcome. */
  closed: Record<string, number>;
  bytesToGuest: number;
  bytesFromGuest: number;
}

/** A route that is listening (or stopped). */
export abstract class RouteRuntime {
  readonly ctx: RouteContext;
  readonly connections = new Set<ProxyConnection>();
  /** Shared with the route this one replaced, so counters stay monotonic. */
  readonly stats: RouteStats;
  /** False once the listener is closed for good (replaced or removed). */
  accepting = false;
  #spec: RouteSpec;

  constructor(spec: RouteSpec, ctx: RouteContext, stats?: RouteStats) {
    this.#spec = spec;
    this.ctx = ctx;
    this.stats = stats ??
      {
        accepted: 0,
        rejected: {},
        closed: {},
        bytesToGuest: 0,
        bytesFromGuest: 0,
      };
  }

  /** The route's spec; its `enabled` is kept current. */
  get spec(): RouteSpec {
    return this.#spec;
  }

  get enabled(): boolean {
    return this.#spec.enabled;
  }

  set enabled(enabled: boolean) {
    this.#spec = { ...this.#spec, enabled };
  }

  get name(): string {
    return this.spec.name;
  }

  /** Where it listens, with the real port when the spec said 0. */
  abstract get listening(): string;

  /** Opens the listener. @throws when the address cannot be used. */
  abstract start(): Promise<void>;

  /** Closes the listener; live connections are not touched. */
  abstract stopAccepting(): Promise<void>;

  /**
   * Admits a new connection from `remote`, or refuses it (disabled, or the
   * connection limit reached: rejecting rather than queueing) and returns
   * null after counting and announcing the refusal.
   */
  protected admit(
    direction: Direction,
    remote: string,
  ): ProxyConnection | null {
    let reason: string | null = null;
    if (!this.enabled) reason = "route disabled";
    else if (this.connections.size >= this.spec.limits.maxConnections) {
      reason = `connection limit of ${this.spec.limits.maxConnections} reached`;
    } else if (!this.ctx.engine.active) reason = "guest not running";
    if (reason !== null) {
      this.refuse(remote, reason);
      return null;
    }
    const pc = new ProxyConnection(this.name, direction, remote);
    this.connections.add(pc);
    return pc;
  }

  /** Counts and announces a refused connection. */
  protected refuse(remote: string, reason: string): void {
    const key = reason.startsWith("connection limit")
      ? "limit"
      : reason === "route disabled"
      ? "disabled"
      : reason === "guest not running"
      ? "guest-down"
      : "connect";
    this.stats.rejected[key] = (this.stats.rejected[key] ?? 0) + 1;
    this.ctx.events.emit({ type: "deny", route: this.name, remote, reason });
    this.ctx.log("info", `route ${this.name}: refused ${remote}: ${reason}`);
  }

  /**
   * A connection the administrator closed while it was connecting: it
   * ends as closed-by-admin (it was not refused).
   */
  protected cancelled(pc: ProxyConnection): void {
    this.connections.delete(pc);
    this.stats.closed["closed-by-admin"] =
      (this.stats.closed["closed-by-admin"] ?? 0) + 1;
    this.ctx.events.emit({
      type: "close",
      connection: pc.id,
      route: this.name,
      outcome: "closed-by-admin",
      bytesToGuest: 0,
      bytesFromGuest: 0,
    });
  }

  /** A connection that never got bridged (its target failed). */
  protected abandon(pc: ProxyConnection, remote: string, reason: string): void {
    this.connections.delete(pc);
    this.refuse(remote, reason);
  }

  /** Watches a bridged connection until it ends. */
  protected track(pc: ProxyConnection, done: Promise<BridgeOutcome>): void {
    this.stats.accepted++;
    this.ctx.events.emit({
      type: "connect",
      connection: pc.id,
      route: this.name,
      remote: pc.remote,
    });
    done.then((outcome) => {
      pc.outcome = outcome;
      this.connections.delete(pc);
      this.stats.closed[outcome] = (this.stats.closed[outcome] ?? 0) + 1;
      const v = pc.vsock;
      const toGuest = v?.stats.bytesOut ?? 0;
      const fromGuest = v?.stats.bytesIn ?? 0;
      this.stats.bytesToGuest += toGuest;
      this.stats.bytesFromGuest += fromGuest;
      if (outcome.startsWith("reset-by-")) {
        const by = outcome.slice("reset-by-".length) as
          | "guest"
          | "peer"
          | "admin";
        this.ctx.events.emit({
          type: "reset",
          connection: pc.id,
          route: this.name,
          by,
        });
      }
      this.ctx.events.emit({
        type: "close",
        connection: pc.id,
        route: this.name,
        outcome,
        bytesToGuest: toGuest,
        bytesFromGuest: fromGuest,
      });
    });
  }

  /** Bytes moved so far, including live connections. */
  bytes(): { toGuest: number; fromGuest: number } {
    let toGuest = this.stats.bytesToGuest;
    let fromGuest = this.stats.bytesFromGuest;
    for (const pc of this.connections) {
      toGuest += pc.vsock?.stats.bytesOut ?? 0;
      fromGuest += pc.vsock?.stats.bytesIn ?? 0;
    }
    return { toGuest, fromGuest };
  }
}

/** `host:port`, with IPv6 hosts bracketed. */
export function hostPort(host: string, port: number): string {
  return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
}
