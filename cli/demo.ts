/**
 * `ivsock demo`: the sidecar plus a simulated guest in a child process,
 * ready to `curl`. The guest runs an HTTP site and an echo service that
 * only vsock reaches.
 *
 * @module
 */

import { parseConfig } from "../config/load.ts";
import { Sidecar } from "../proxy/sidecar.ts";
import {
  intOption,
  LOG_OPTIONS,
  logSettings,
  parse,
  untilSignal,
} from "./args.ts";
import { makeLogger } from "./logger.ts";
import { startAdmin } from "./admin_hook.ts";

export const DEMO_HELP = `Usage: ivsock demo [options]

Starts the host sidecar and a simulated guest (the guest agent in a child
process, attached over a /dev/shm region). Inside the "guest" run an HTTP
site and an echo service, reachable only over vsock.

Options:
  --http-port N    guest web page on http://127.0.0.1:N/      (default 8080)
  --echo-port N    guest echo service over TCP on 127.0.0.1:N  (default 8081)
  --ws-port N      guest echo service over WebSocket on ws://127.0.0.1:N/echo (default 8082)
  --admin-port N   admin API on http://127.0.0.1:N             (default 8090)
  --log-format F   text (default) or json
  --log-level L    debug, info, warn (default) or error
  --help           show this message

Ctrl-C stops everything and removes the region.
`;

const GUEST_START_MS = 15_000;

/** Runs `demo`; resolves to the exit code. */
export async function demo(args: string[]): Promise<number> {
  const values = parse("demo", args, {
    "http-port": { type: "string" },
    "echo-port": { type: "string" },
    "ws-port": { type: "string" },
    "admin-port": { type: "string" },
    help: { type: "boolean" },
    ...LOG_OPTIONS,
  });
  if (values.help) {
    console.log(DEMO_HELP);
    return 0;
  }
  const httpPort = intOption(
    "demo",
    "http-port",
    values["http-port"],
    0,
    65535,
    8080,
  );
  const echoPort = intOption(
    "demo",
    "echo-port",
    values["echo-port"],
    0,
    65535,
    8081,
  );
  const wsPort = intOption(
    "demo",
    "ws-port",
    values["ws-port"],
    0,
    65535,
    8082,
  );
  const adminPort = intOption(
    "demo",
    "admin-port",
    values["admin-port"],
    0,
    65535,
    8090,
  );
  const logOptions = logSettings("demo", values, {
    format: "text",
    level: "warn",
  });
  const log = makeLogger(logOptions);

  const region = `/dev/shm/ivsock-demo-${Deno.pid}`;
  const servicesDir = await Deno.makeTempDir({ prefix: "ivsock-demo-guest-" });
  const config = parseConfig({
    device: { region, size: "4MiB", guestCid: 3 },
    routes: [
      {
        name: "web",
        from: { type: "tcp", port: httpPort },
        to: { type: "vsock", port: 80 },
      },
      {
        name: "echo",
        from: { type: "tcp", port: echoPort },
        to: { type: "vsock", port: 7 },
      },
      {
        name: "echo-ws",
        from: { type: "ws", port: wsPort, path: "/echo" },
        to: { type: "vsock", port: 7 },
      },
    ],
    admin: { port: adminPort },
    shutdownGraceMs: 1000,
  }, "demo config");

  const stopSignal = untilSignal((sig) =>
    console.error(
      `ivsock demo: ${sig}: already stopping (send SIGKILL to force)`,
    )
  );
  const sidecar = await Sidecar.start(config, log);
  let child: Deno.ChildProcess | null = null;
  let admin: Awaited<ReturnType<typeof startAdmin>> = null;
  try {
    admin = await startAdmin(sidecar, config, log);
    child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--allow-all",
        new URL("../mod.ts", import.meta.url).href,
        "guest",
        "--region",
        region,
        "--demo",
        servicesDir,
        "--log-format",
        logOptions.format,
        "--log-level",
        logOptions.level,
      ],
      stdin: "null",
      stdout: "inherit",
      stderr: "inherit",
    }).spawn();
    const exited = child.status;
    const deadline = Date.now() + GUEST_START_MS;
    while (!sidecar.engine.active) {
      const done = await Promise.race([
        exited,
        new Promise((r) => setTimeout(() => r(null), 20)),
      ]);
      if (done !== null) {
        throw new Error(
          `the simulated guest exited during start-up (${
            JSON.stringify(done)
          })`,
        );
      }
      if (Date.now() > deadline) {
        throw new Error(
          `the simulated guest did not come up within ${GUEST_START_MS} ms`,
        );
      }
    }
    const at = (name: string) => sidecar.routes.get(name)!.listening;
    console.log(`ivsock demo: the guest is running (region ${region}).

  Guest web page:      curl http://${at("web")}/
  Echo over TCP:       ${at("echo")}
  Echo over WebSocket: ${at("echo-ws")}
  ${
      admin
        ? `Admin API:           curl ${admin.url}/v1/connections`
        : "Admin API:           (not available in this build)"
    }

Try the echo service with Deno (from the repository):
  .tools/node_modules/.bin/deno eval 'const c = await Deno.connect({port: ${
      at("echo").split(":").pop()
    }}); await c.write(new TextEncoder().encode("hello")); await c.closeWrite(); console.log(new TextDecoder().decode((await new Response(c.readable).arrayBuffer())))'

Press Ctrl-C to stop.`);
    const outcome = await Promise.race([
      stopSignal,
      exited.then((s) => s),
    ]);
    if (typeof outcome !== "string") {
      log(
        "error",
        `the simulated guest exited unexpectedly (code ${outcome.code})`,
      );
      return 1;
    }
    return 0;
  } finally {
    if (child !== null) {
      try {
        child.kill("SIGTERM");
      } catch {
        // Already gone.
      }
      await child.status;
    }
    await admin?.stop();
    await sidecar.stop(config.shutdownGraceMs);
    await Deno.remove(servicesDir, { recursive: true }).catch(() => {});
    console.log("ivsock demo: stopped.");
  }
}
