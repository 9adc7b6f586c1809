/**
 * ivsock: a virtio-vsock device model over shared memory that forwards vsock
 * streams to TCP and WebSocket.
 *
 * As a library this module exports the device model; run as a program it is
 * the `ivsock` command line.
 *
 * @module
 */

export * from "./device/mod.ts";

if (import.meta.main) {
  const { main } = await import("./cli/main.ts");
  Deno.exit(await main(Deno.args));
}
