/**
 * The `ivsock` command line. Subcommands are loaded on demand, so `guest`
 * (which runs inside VMs) loads no more than it needs.
 *
 * @module
 */

import { UsageError } from "./args.ts";

const USAGE =
  `ivsock: reach services inside a VM over virtio-vsock on shared memory

Usage: deno task start -- <command> [options]

Commands:
  serve --config FILE   run the host sidecar (device, routes, admin API)
  guest --region PATH   run the guest agent (inside the VM, or simulated)
  demo                  run the sidecar and a simulated guest, ready to curl
  help                  show this message

Run a command with --help for its options.
`;

/** Runs the CLI with `args`; resolves to the process exit code. */
export async function main(args: string[]): Promise<number> {
  const [command, ...rest] = args;
  try {
    switch (command) {
      case undefined:
      case "help":
      case "--help":
      case "-h":
        console.log(USAGE);
        return 0;
      case "serve":
        return await (await import("./serve.ts")).serve(rest);
      case "guest":
        return await (await import("./guest.ts")).guest(rest);
      case "demo":
        return await (await import("./demo.ts")).demo(rest);
      default:
        console.error(
          `ivsock: unknown command ${JSON.stringify(command)}\n\n${USAGE}`,
        );
        return 2;
    }
  } catch (err) {
    return report(err);
  }
}

/** Prints an error the way a user should see it; returns the exit code. */
function report(err: unknown): number {
  if (
    err instanceof UsageError ||
    (err instanceof Error && err.name === "ConfigError")
  ) {
    console.error(err.message);
    return 2;
  }
  if (
    err instanceof Error &&
    (err.name === "SidecarError" || err.name === "TransportError" ||
      err.name === "ShmError")
  ) {
    console.error(`ivsock: ${err.message}`);
    return 1;
  }
  console.error(
    `ivsock: unexpected error: ${
      err instanceof Error ? err.stack ?? err.message : err
    }`,
  );
  return 1;
}
