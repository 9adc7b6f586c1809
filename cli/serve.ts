/**
 * `ivsock serve --config FILE`: the host sidecar.
 *
 * @module
 */

import { loadConfig } from "../config/load.ts";
import { Sidecar } from "../proxy/sidecar.ts";
import {
  LOG_OPTIONS,
  logSettings,
  parse,
  untilSignal,
  UsageError,
} from "./args.ts";
import { makeLogger } from "./logger.ts";
import { startAdmin } from "./admin_hook.ts";

export const SERVE_HELP = `Usage: ivsock serve --config FILE [options]

Runs the host sidecar: the virtio-vsock device on the config's shared-memory
region, its routes, and the admin API.

Options:
  --config FILE        JSON config file (see README and docs/config.md)
  --log-format FORMAT  text (default) or json: one line per event
  --log-level LEVEL    debug, info (default), warn or error
  --help               show this message

SIGINT or SIGTERM stops accepting, lets open connections finish for
shutdownGraceMs (default 5000), resets the rest, removes the region file and
sockets it created, and exits 0.
`;

/** Runs `serve`; resolves to the exit code. */
export async function serve(args: string[]): Promise<number> {
  const values = parse("serve", args, {
    config: { type: "string" },
    help: { type: "boolean" },
    ...LOG_OPTIONS,
  });
  if (values.help) {
    console.log(SERVE_HELP);
    return 0;
  }
  if (typeof values.config !== "string") {
    throw new UsageError(
      "ivsock serve: --config FILE is required (see: ivsock serve --help)",
    );
  }
  const config = await loadConfig(values.config);
  const log = makeLogger(logSettings("serve", values, config.log));
  // Listen for signals before starting anything: a SIGTERM that arrives
  // during start-up is answered once start-up is done, with a clean stop.
  const stopSignal = untilSignal((sig) =>
    log("info", `${sig}: already stopping`)
  );
  const sidecar = await Sidecar.start(config, log);
  let admin;
  try {
    admin = await startAdmin(sidecar, config, log);
  } catch (err) {
    // Nothing half-started is left behind: the device and routes go too.
    await sidecar.stop(0);
    throw err;
  }
  const signal = await stopSignal;
  log("info", `${signal}: stopping (grace ${config.shutdownGraceMs} ms)`);
  await admin?.stop();
  await sidecar.stop(config.shutdownGraceMs);
  return 0;
}
