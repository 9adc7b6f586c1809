/**
 * The data-plane HTTP listeners that carry WebSocket routes: one Deno HTTP
 * server (with a Hono app) per `host:port`, each serving any number of
 * WebSocket paths. Paths are looked up at request time, so routes come and
 * go while the server runs.
 *
 * @module
 */

import { type Context, Hono } from "../deps.ts";
import { hostPort } from "./route_runtime.ts";

/** Handles upgrades for one path. */
export interface PathHandler {
  handle(c: Context): Promise<Response> | Response;
}

interface Listener {
  server: Deno.HttpServer<Deno.NetAddr>;
  abort: AbortController;
  paths: Map<string, PathHandler>;
  /** Servers opened for port 0 belong to one route only. */
  ephemeral: boolean;
}

/** The WebSocket listeners of one sidecar. */
export class DataPlane {
  #listeners = new Map<string, Listener>();

  /**
   * Serves `path` on `host:port`, starting the server if needed. Returns
   * the address actually listened on.
   *
   * @throws {Deno.errors.AddrInUse} and friends when the server cannot bind.
   * @throws {Error} when the path is already served there.
   */
  add(host: string, port: number, path: string, handler: PathHandler): string {
    const key = hostPort(host, port);
    let l = port === 0 ? undefined : this.#listeners.get(key);
    if (l === undefined) {
      l = this.#start(host, port);
      this.#listeners.set(
        port === 0 ? hostPort(host, l.server.addr.port) : key,
        l,
      );
    }
    if (l.paths.has(path)) {
      throw new Error(`${key}${path} is already served`);
    }
    l.paths.set(path, handler);
    return hostPort(host, l.server.addr.port);
  }

  /** Stops serving `path`; a server left with no paths is shut down. */
  async remove(address: string, path: string): Promise<void> {
    const l = this.#listeners.get(address);
    if (l === undefined) return;
    l.paths.delete(path);
    if (l.paths.size === 0) {
      this.#listeners.delete(address);
      l.abort.abort();
      await l.server.finished;
    }
  }

  /** Shuts every server down. */
  async close(): Promise<void> {
    const all = [...this.#listeners.values()];
    this.#listeners.clear();
    for (const l of all) l.abort.abort();
    await Promise.all(all.map((l) => l.server.finished));
  }

  #start(host: string, port: number): Listener {
    const paths = new Map<string, PathHandler>();
    const app = new Hono();
    app.all("*", (c) => {
      const handler = paths.get(c.req.path);
      if (handler === undefined) {
        return c.json({ error: `no WebSocket route at ${c.req.path}` }, 404);
      }
      return handler.handle(c);
    });
    const abort = new AbortController();
    const server = Deno.serve({
      hostname: host,
      port,
      signal: abort.signal,
      onListen() {},
    }, app.fetch);
    return { server, abort, paths, ephemeral: port === 0 };
  }
}
