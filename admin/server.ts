/**
 * The admin API's listener: loopback by default, and never off loopback
 * without a bearer token.
 *
 * @module
 */

import type { LogFn } from "../device/log.ts";
import type { Sidecar } from "../proxy/sidecar.ts";
import { adminApp } from "./app.ts";
import { loadToken, type TokenSource } from "./auth.ts";

/** A running admin listener. */
export interface AdminServer {
  /** `http://host:port` (with the real port when 0 was asked). */
  url: string;
  stop(): Promise<void>;
}

/**
 * Starts the admin API on `host:port`.
 *
 * @throws {AdminAuthError} off loopback without a token, or when the token
 * cannot be read.
 * @throws {Deno.errors.AddrInUse} when the port is taken.
 */
export async function startAdminServer(
  sidecar: Sidecar,
  listen: { host: string; port: number; token?: TokenSource },
  log: LogFn,
): Promise<AdminServer> {
  const token = await loadToken(listen.host, listen.token);
  const app = adminApp(sidecar, { token });
  const abort = new AbortController();
  const server = Deno.serve({
    hostname: listen.host,
    port: listen.port,
    signal: abort.signal,
    onListen() {},
  }, app.fetch);
  const host = listen.host.includes(":") ? `[${listen.host}]` : listen.host;
  const url = `http://${host}:${server.addr.port}`;
  log("info", `admin API on ${url}${token ? " (bearer token required)" : ""}`);
  return {
    url,
    async stop() {
      abort.abort();
      await server.finished;
    },
  };
}
