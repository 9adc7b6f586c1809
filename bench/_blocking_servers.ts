/**
 * Benchmark child: one loopback TCP server (argument `echo` or `sink`, as
 * in `_servers.ts`) made of blocking system calls through FFI on the main
 * thread, one connection at a time, about what a small C server costs.
 * Prints `ready kind=port`, then serves until killed.
 *
 * For the scenarios that open one connection at a time
 * (`blocking_scenarios.ts`); a second client waits in the listen backlog.
 *
 * @module
 */

import {
  describeErrno,
  errno,
  IPPROTO_TCP,
  libc,
  MSG_NOSIGNAL,
  SOCK_STREAM,
  TCP_NODELAY,
} from "../device/shm/_libc.ts";
import { AF_INET, inetSockaddr } from "../proxy/socket_address.ts";

const kind = Deno.args[0];
if (kind !== "echo" && kind !== "sink") {
  throw new Error(`unknown server kind ${kind}: echo or sink`);
}
const c = libc();

function check(n: number, call: string): number {
  if (n < 0) throw new Error(`${call}: ${describeErrno(errno())}`);
  return n;
}

const listener = check(c.socket(AF_INET, SOCK_STREAM, 0), "socket");
const addr = inetSockaddr("127.0.0.1", 0).bytes;
check(c.bind(listener, addr, addr.byteLength), "bind");
check(c.listen(listener, 1024), "listen");
const len = new Uint32Array([addr.byteLength]);
check(
  c.getsockname(listener, addr, new Uint8Array(len.buffer)),
  "getsockname",
);
const port = new DataView(addr.buffer).getUint16(2, false);
console.log(`ready ${kind}=${port}`);

const one = new Uint8Array(new Int32Array([1]).buffer);
const buf = new Uint8Array(256 * 1024);

/** Writes all of `bytes`; false if the peer went away. */
function sendAll(fd: number, bytes: Uint8Array): boolean {
  let at = 0;
  while (at < bytes.length) {
    const view = at === 0 ? bytes : bytes.subarray(at);
    const n = c.send(fd, view, BigInt(view.byteLength), MSG_NOSIGNAL);
    if (n < 0) return false;
    at += n;
  }
  return true;
}

for (;;) {
  const fd = c.accept4(listener, null, null, 0);
  if (fd < 0) continue; // the client gave up before we took it
  c.setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, one, 4);
  let total = 0;
  for (;;) {
    const n = c.recv(fd, buf, BigInt(buf.byteLength), 0);
    if (n <= 0) break;
    total += n;
    if (kind === "echo" && !sendAll(fd, buf.subarray(0, n))) break;
  }
  if (kind === "sink") sendAll(fd, new TextEncoder().encode(String(total)));
  c.close(fd);
}
