/**
 * Starts the admin API for a sidecar when the config asks for it.
 *
 * @module
 */

import type { LogFn } from "../device/log.ts";
import type { ConfigSpec } from "../config/schema.ts";
import type { Sidecar } from "../proxy/sidecar.ts";
import { startAdminServer } from "../admin/server.ts";
import { SidecarError } from "../proxy/sidecar.ts";

/** A running admin listener. */
export interface AdminHandle {
  url: string;
  stop(): Promise<void>;
}

/**
 * Starts the admin API, or returns null when `admin` is false.
 *
 * @throws {SidecarError} naming the admin setting that prevents it.
 */
export async function startAdmin(
  sidecar: Sidecar,
  config: ConfigSpec,
  log: LogFn,
): Promise<AdminHandle | null> {
  if (config.admin === false) return null;
  try {
    return await startAdminServer(sidecar, {
      host: config.admin.host,
      port: config.admin.port,
      ...(config.admin.token ? { token: config.admin.token } : {}),
    }, log);
  } catch (err) {
    const what = err instanceof Deno.errors.AddrInUse
      ? "the address is already in use"
      : err instanceof Error
      ? err.message
      : String(err);
    throw new SidecarError(
      what.startsWith("admin.")
        ? what
        : `admin ${config.admin.host}:${config.admin.port}: ${what}`,
      { cause: err },
    );
  }
}
