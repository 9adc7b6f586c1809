/**
 * The `ivsock` command line.
 *
 * @module
 */

const USAGE =
  `ivsock: a virtio-vsock device over shared memory, forwarding to TCP and WebSocket

Usage: deno task start -- <command> [options]

Commands:
  demo    not available yet: the sidecar and simulated guest arrive with the proxy plane
  help    show this message
`;

/** Runs the CLI with `args`; resolves to the process exit code. */
export async function main(args: string[]): Promise<number> {
  const [command] = args;
  if (command === undefined || command === "help" || command === "--help") {
    console.log(USAGE);
    return 0;
  }
  if (command === "demo") {
    console.error(
      "ivsock demo: not available yet. The demo (sidecar plus simulated guest) lands with the proxy plane; run the tests meanwhile.",
    );
    return 2;
  }
  console.error(`ivsock: unknown command "${command}"\n\n${USAGE}`);
  return await Promise.resolve(2);
}
