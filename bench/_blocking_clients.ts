/**
 * The benchmarks' clients again, as plain blocking system calls through FFI
 * on the calling thread: no event loop, no promises, about what a C client
 * costs. Deno's own sockets cost the client 90-150 us of CPU per
 * connection, a share of two vCPUs that would otherwise go to the path
 * being measured (docs/performance.md, "The endpoints' own cost").
 *
 * Each call blocks the thread until it is done; use them only from the
 * benchmark process, between the harness's awaits.
 *
 * @module
 */

import {
  describeErrno,
  EAGAIN,
  errno,
  IPPROTO_TCP,
  libc,
  MSG_NOSIGNAL,
  SHUT_WR,
  SOCK_STREAM,
  SOL_SOCKET,
  TCP_NODELAY,
} from "../device/shm/_libc.ts";
import { AF_INET, inetSockaddr } from "../proxy/socket_address.ts";

const MIB = 1024 * 1024;

const ONE = new Uint8Array(new Int32Array([1]).buffer);
// SO_RCVTIMEO and SO_SNDTIMEO (the same on x86-64 and arm64): a path that
// stalls fails the scenario after this long instead of hanging the bench,
// whose event loop a blocked call holds too.
const SO_RCVTIMEO = 20;
const SO_SNDTIMEO = 21;
const TIMEOUT_S = 30;
const TIMEOUT = new Uint8Array(
  new BigInt64Array([BigInt(TIMEOUT_S), 0n]).buffer,
);

/** Opens a blocking TCP connection to `addr`, TCP_NODELAY set. */
function connect(addr: Uint8Array<ArrayBuffer>, port: number): number {
  const c = libc();
  const fd = c.socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) fail("socket");
  c.setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, ONE, 4);
  c.setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, TIMEOUT, TIMEOUT.byteLength);
  c.setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, TIMEOUT, TIMEOUT.byteLength);
  if (c.connect(fd, addr, addr.byteLength) < 0) {
    const err = errno();
    c.close(fd);
    throw new Error(`connect to port ${port}: ${describeErrno(err)}`);
  }
  return fd;
}

function loopback(port: number): Uint8Array<ArrayBuffer> {
  return inetSockaddr("127.0.0.1", port).bytes as Uint8Array<ArrayBuffer>;
}

function fail(call: string): never {
  const err = errno();
  throw new Error(
    err === EAGAIN
      ? `${call}: nothing moved for ${TIMEOUT_S} s`
      : `${call}: ${describeErrno(err)}`,
  );
}

function sendAll(fd: number, bytes: Uint8Array): void {
  let at = 0;
  while (at < bytes.length) {
    const view = at === 0 ? bytes : bytes.subarray(at);
    const n = libc().send(fd, view, BigInt(view.byteLength), MSG_NOSIGNAL);
    if (n < 0) fail("send");
    at += n;
  }
}

/** Reads exactly `into.length` bytes; false if the peer closed first. */
function recvExactly(fd: number, into: Uint8Array): boolean {
  let at = 0;
  while (at < into.length) {
    const view = at === 0 ? into : into.subarray(at);
    const n = libc().recv(fd, view, BigInt(view.byteLength), 0);
    if (n < 0) fail("recv");
    if (n === 0) return false;
    at += n;
  }
  return true;
}

/**
 * `connectRate` (`_clients.ts`) one at a time: `count` connections, each
 * sending one byte and waiting for its echo. Returns connections per second.
 */
export function blockingConnectRate(port: number, count: number): number {
  const b = new Uint8Array([1]);
  const addr = loopback(port);
  const t0 = performance.now();
  for (let i = 0; i < count; i++) {
    const fd = connect(addr, port);
    try {
      sendAll(fd, b);
      if (!recvExactly(fd, b)) throw new Error("no echo");
    } finally {
      libc().close(fd);
    }
  }
  return count / ((performance.now() - t0) / 1000);
}

/** `pingPong` (`_clients.ts`): 64-byte round trips in us, sorted. */
export function blockingPingPong(port: number, count: number): number[] {
  const fd = connect(loopback(port), port);
  const b = new Uint8Array(64);
  const out: number[] = [];
  try {
    for (let i = 0; i < count; i++) {
      const t = performance.now();
      sendAll(fd, b);
      if (!recvExactly(fd, b)) {
        throw new Error("the echo closed the connection");
      }
      out.push((performance.now() - t) * 1000);
    }
  } finally {
    libc().close(fd);
  }
  return out.sort((x, y) => x - y);
}

/**
 * `bulk` (`_clients.ts`): `mib` MiB in 64 KiB writes to a sink, half-close, and
 * the sink's byte count back; returns MiB/s.
 */
export function blockingBulk(port: number, mib: number): number {
  const chunk = new Uint8Array(64 * 1024).fill(0x5a);
  const fd = connect(loopback(port), port);
  const answer = new Uint8Array(32);
  let got = 0;
  let ms: number;
  try {
    const t0 = performance.now();
    for (let i = 0; i < mib * 16; i++) sendAll(fd, chunk);
    if (libc().shutdown(fd, SHUT_WR) < 0) fail("shutdown");
    for (;;) {
      const view = answer.subarray(got);
      const n = libc().recv(fd, view, BigInt(view.byteLength), 0);
      if (n < 0) fail("recv");
      if (n === 0) break;
      got += n;
    }
    ms = performance.now() - t0;
  } finally {
    libc().close(fd);
  }
  const text = new TextDecoder().decode(answer.subarray(0, got));
  if (Number(text) !== mib * MIB) {
    throw new Error(`the sink counted ${text} bytes, expected ${mib * MIB}`);
  }
  return mib / (ms / 1000);
}
