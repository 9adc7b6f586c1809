/**
 * The sidecar's routes at run time: add, replace, enable, disable and remove
 * them while traffic flows, list their connections, and stop everything in
 * order at shutdown.
 *
 * Changing a route never drops its live connections silently: a replaced or
 * removed route stops accepting, and its open connections carry on (still
 * listed) until they end, unless a drain was asked for, which closes them
 * gracefully.
 *
 * @module
 */

import type { RouteSpec } from "../config/schema.ts";
import type { DataPlane } from "./data_plane.ts";
import type { ProxyConnection } from "./proxy_connection.ts";
import type {
  RouteContext,
  RouteRuntime,
  RouteStats,
} from "./route_runtime.ts";
import { TcpRoute } from "./tcp_route.ts";
import { VsockRoute } from "./vsock_route.ts";
import { WsRoute } from "./ws_route.ts";

/** A route operation that cannot be done, with an HTTP-like kind. */
export class RouteError extends Error {
  override name = "RouteError";
  readonly kind: "not-found" | "conflict";
  constructor(
    kind: "not-found" | "conflict",
    message: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
    this.kind = kind;
  }
}

/** All routes of one sidecar. */
export class RouteTable {
  readonly ctx: RouteContext;
  #plane: DataPlane;
  #routes = new Map<string, RouteRuntime>();
  /** Replaced or removed routes whose connections are still open. */
  #retired = new Set<RouteRuntime>();

  constructor(ctx: RouteContext, plane: DataPlane) {
    this.ctx = ctx;
    this.#plane = plane;
  }

  /** Routes in the order they were added. */
  list(): RouteRuntime[] {
    return [...this.#routes.values()];
  }

  get(name: string): RouteRuntime | undefined {
    return this.#routes.get(name);
  }

  /** Every live connection, including those of retired routes. */
  connections(): ProxyConnection[] {
    const out: ProxyConnection[] = [];
    for (const r of this.#retired) {
      if (r.connections.size === 0) this.#retired.delete(r); // all ended
    }
    for (const r of [...this.#routes.values(), ...this.#retired]) {
      out.push(...r.connections);
    }
    return out;
  }

  connection(id: string): ProxyConnection | undefined {
    return this.connections().find((c) => c.id === id);
  }

  /**
   * Adds and starts a route.
   *
   * @throws {RouteError} "conflict" when the name or listener is taken, or
   * the listener cannot be opened.
   */
  async add(spec: RouteSpec): Promise<RouteRuntime> {
    if (this.#routes.has(spec.name)) {
      throw new RouteError(
        "conflict",
        `a route named "${spec.name}" already exists`,
      );
    }
    this.#checkListener(spec, null);
    const route = await this.#start(spec);
    this.#routes.set(spec.name, route);
    this.ctx.events.emit({ type: "route", route: spec.name, change: "added" });
    return route;
  }

  /**
   * Replaces route `name` with `spec` (which may rename it). The old
   * route's connections continue; if the new listener cannot start, the old
   * one is restored and nothing changes.
   */
  async replace(name: string, spec: RouteSpec): Promise<RouteRuntime> {
    const old = this.#routes.get(name);
    if (old === undefined) {
      throw new RouteError("not-found", `no route named "${name}"`);
    }
    if (spec.name !== name && this.#routes.has(spec.name)) {
      throw new RouteError(
        "conflict",
        `a route named "${spec.name}" already exists`,
      );
    }
    this.#checkListener(spec, name);
    await old.stopAccepting();
    let route: RouteRuntime;
    try {
      // Same name: the counters carry on, so /metrics stays monotonic.
      route = await this.#start(
        spec,
        spec.name === name ? old.stats : undefined,
      );
    } catch (err) {
      await old.start().catch((e) =>
        this.ctx.log(
          "error",
          `route ${name}: could not restore its listener: ${
            e instanceof Error ? e.message : e
          }`,
        )
      );
      throw err;
    }
    this.#retire(old);
    this.#routes.delete(name);
    this.#routes.set(spec.name, route);
    this.ctx.events.emit({
      type: "route",
      route: spec.name,
      change: "replaced",
    });
    return route;
  }

  /**
   * Creates or replaces each route by name. The whole list is checked
   * against itself and the routes it leaves in place before anything
   * changes, so a conflict changes nothing; identical routes are left
   * untouched (their listeners and connections too).
   *
   * @throws {RouteError} "conflict" naming both routes.
   */
  async populate(
    specs: RouteSpec[],
  ): Promise<{ created: string[]; replaced: string[]; unchanged: string[] }> {
    const names = new Set(specs.map((s) => s.name));
    const kept = [...this.#routes.values()].filter((r) => !names.has(r.name))
      .map((r) => r.spec);
    for (const [i, spec] of specs.entries()) {
      const problem = conflictWith(spec, [...kept, ...specs.slice(0, i)]);
      if (problem !== null) {
        throw new RouteError("conflict", `route "${spec.name}": ${problem}`);
      }
    }
    const result = {
      created: [] as string[],
      replaced: [] as string[],
      unchanged: [] as string[],
    };
    for (const spec of specs) {
      const current = this.#routes.get(spec.name);
      if (current === undefined) {
        await this.add(spec);
        result.created.push(spec.name);
      } else if (sameSpec(current.spec, spec)) {
        result.unchanged.push(spec.name);
      } else if (sameSpec({ ...current.spec, enabled: spec.enabled }, spec)) {
        this.setEnabled(spec.name, spec.enabled);
        result.replaced.push(spec.name);
      } else {
        await this.replace(spec.name, spec);
        result.replaced.push(spec.name);
      }
    }
    return result;
  }

  /** Stops accepting on route `name`; `drain` also closes its connections gracefully. */
  async remove(name: string, options: { drain?: boolean } = {}): Promise<void> {
    const route = this.#routes.get(name);
    if (route === undefined) {
      throw new RouteError("not-found", `no route named "${name}"`);
    }
    this.#routes.delete(name);
    await route.stopAccepting();
    if (options.drain) { for (const c of route.connections) c.close(); }
    this.#retire(route);
    this.ctx.events.emit({ type: "route", route: name, change: "removed" });
  }

  /** Enables or disables new connections; live ones are untouched. */
  setEnabled(name: string, enabled: boolean): RouteRuntime {
    const route = this.#routes.get(name);
    if (route === undefined) {
      throw new RouteError("not-found", `no route named "${name}"`);
    }
    if (route.enabled !== enabled) {
      route.enabled = enabled;
      this.ctx.events.emit({
        type: "route",
        route: name,
        change: enabled ? "enabled" : "disabled",
      });
    }
    return route;
  }

  /**
   * Stops every listener, lets open connections finish for up to `graceMs`,
   * then resets whatever is left.
   */
  async close(graceMs: number): Promise<void> {
    const all = [...this.#routes.values()];
    this.#routes.clear();
    await Promise.all(all.map((r) => r.stopAccepting()));
    for (const r of all) this.#retire(r);
    const deadline = Date.now() + graceMs;
    while (this.connections().length > 0 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 20));
    }
    const left = this.connections();
    if (left.length > 0) {
      this.ctx.log(
        "info",
        `resetting ${left.length} connection(s) still open after ${graceMs} ms`,
      );
      for (const c of left) c.reset();
      const waitUntil = Date.now() + 1000;
      while (this.connections().length > 0 && Date.now() < waitUntil) {
        await new Promise((r) => setTimeout(r, 10));
      }
    }
  }

  async #start(spec: RouteSpec, stats?: RouteStats): Promise<RouteRuntime> {
    const route = spec.from.type === "tcp"
      ? new TcpRoute(spec, this.ctx, stats)
      : spec.from.type === "vsock"
      ? new VsockRoute(spec, this.ctx, stats)
      : new WsRoute(spec, this.ctx, this.#plane, stats);
    try {
      await route.start();
    } catch (err) {
      const what = err instanceof Deno.errors.AddrInUse
        ? "the address is already in use"
        : err instanceof Error
        ? err.message
        : String(err);
      throw new RouteError(
        "conflict",
        `route "${spec.name}" cannot listen on ${describeFrom(spec)}: ${what}`,
        {
          cause: err,
        },
      );
    }
    return route;
  }

  #checkListener(spec: RouteSpec, except: string | null): void {
    const others = [...this.#routes.values()].filter((r) => r.name !== except)
      .map((r) => r.spec);
    const problem = conflictWith(spec, others);
    if (problem !== null) {
      throw new RouteError("conflict", `route "${spec.name}": ${problem}`);
    }
  }

  #retire(route: RouteRuntime): void {
    if (route.connections.size > 0) this.#retired.add(route);
  }
}

function describeFrom(spec: RouteSpec): string {
  const f = spec.from;
  return f.type === "vsock"
    ? `vsock port ${f.port}`
    : `${f.host}:${f.port}${f.type === "ws" ? f.path : ""}`;
}

/**
 * Why `spec` cannot listen beside `others`, naming the route in the way, or
 * null: two listeners on one `host:port` (unless both are WebSocket routes
 * on different paths), or two routes on one vsock port. Port 0 never
 * conflicts: each such listener gets its own free port.
 */
function conflictWith(
  spec: RouteSpec,
  others: readonly RouteSpec[],
): string | null {
  const f = spec.from;
  for (const o of others) {
    const g = o.from;
    if (f.type === "vsock" || g.type === "vsock") {
      if (f.type === "vsock" && g.type === "vsock" && f.port === g.port) {
        return `vsock port ${f.port} is already used by route "${o.name}"`;
      }
      continue;
    }
    if (f.port === 0 || f.host !== g.host || f.port !== g.port) continue;
    if (f.type === "ws" && g.type === "ws" && f.path !== g.path) continue;
    const where = `${f.host}:${f.port}${
      f.type === "ws" && g.type === "ws" ? f.path : ""
    }`;
    return `${where} is already used by route "${o.name}"`;
  }
  return null;
}

/** Two specs are the same route (compared as the JSON they serialise to). */
function sameSpec(a: RouteSpec, b: RouteSpec): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}
