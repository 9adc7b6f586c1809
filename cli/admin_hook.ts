/**
 * Starts the admin API for a sidecar when the config asks for it. The API
 * itself lives in `admin/`; this is the seam the CLI calls.
 *
 * @module
 */

import type { LogFn } from "../device/log.ts";
import type { ConfigSpec } from "../config/schema.ts";
import type { Sidecar } from "../proxy/sidecar.ts";

/** A running admin listener. */
export interface AdminHandle {
  url: string;
  stop(): Promise<void>;
}

/** Starts the admin API, or returns null when `admin` is false. */
export function startAdmin(
  _sidecar: Sidecar,
  config: ConfigSpec,
  log: LogFn,
): Promise<AdminHandle | null> {
  if (config.admin === false) return Promise.resolve(null);
  log("info", "admin API: not available in this build yet");
  return Promise.resolve(null);
}
