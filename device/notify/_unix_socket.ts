/**
 * The few AF_UNIX stream socket calls the ivshmem protocol needs, through
 * FFI because `Deno.listen({ transport: "unix" })` cannot pass descriptors.
 *
 * Every socket is non-blocking and close-on-exec; callers wait for
 * readiness with `pollOnce`. Messages are the protocol's unit: one 8-byte
 * little-endian signed integer, optionally with one descriptor attached as
 * SCM_RIGHTS.
 *
 * Structure layouts are those of the LP64 Linux ABIs (x86-64 and arm64
 * agree):
 *
 * ```text
 * struct sockaddr_un { u16 sun_family; char sun_path[108]; }
 * struct msghdr { void *name @0; u32 namelen @8; iovec *iov @16;
 *                 usize iovlen @24; void *control @32; usize controllen @40;
 *                 i32 flags @48; }                                 (56 bytes)
 * struct iovec  { void *base @0; usize len @8; }                   (16 bytes)
 * struct cmsghdr { usize len @0; i32 level @8; i32 type @12; data @16 }
 * ```
 *
 * @module
 */

import {
  AF_UNIX,
  cString,
  describeErrno,
  EAGAIN,
  ECONNREFUSED,
  ECONNRESET,
  errno,
  libc,
  MSG_CMSG_CLOEXEC,
  MSG_NOSIGNAL,
  SCM_RIGHTS,
  SOCK_CLOEXEC,
  SOCK_NONBLOCK,
  SOCK_STREAM,
  SOL_SOCKET,
} from "../shm/_libc.ts";

/** `sizeof(sun_path)` less its NUL terminator. */
export const MAX_SOCKET_PATH_BYTES = 107;

/** Bytes in one protocol message. */
export const MESSAGE_BYTES = 8;

const SOCKADDR_UN_SIZE = 110;
const MSGHDR_SIZE = 56;
const IOVEC_SIZE = 16;
const CMSG_HEADER = 16;
/** CMSG_SPACE(sizeof(int)): the header plus one int, padded to 8. */
const CMSG_SPACE_ONE_FD = 24;
/** CMSG_LEN(sizeof(int)). */
const CMSG_LEN_ONE_FD = 20;
/** Room for a few descriptors, so a peer that sends more is noticed. */
const RECV_CONTROL_SIZE = 64;

/** A socket call failed; `errno` is the raw errno value. */
export class SocketError extends Error {
  override name = "SocketError";
  readonly errno: number;
  constructor(action: string, code: number) {
    super(`Cannot ${action}: ${describeErrno(code)}`);
    this.errno = code;
  }
}

function sockaddr(path: string): Uint8Array<ArrayBuffer> {
  const bytes = cString(path);
  if (bytes.length - 1 > MAX_SOCKET_PATH_BYTES) {
    throw new RangeError(
      `Socket path must be at most ${MAX_SOCKET_PATH_BYTES} bytes, received ${
        bytes.length - 1
      } (${path})`,
    );
  }
  const addr = new Uint8Array(SOCKADDR_UN_SIZE);
  new DataView(addr.buffer).setUint16(0, AF_UNIX, true);
  addr.set(bytes, 2);
  return addr;
}

function newSocket(): number {
  const fd = libc().socket(
    AF_UNIX,
    SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
    0,
  );
  if (fd < 0) throw new SocketError("create a unix socket", errno());
  return fd;
}

/**
 * Binds a listening socket at `path` (which must not exist).
 *
 * @throws {RangeError} if the path is too long for `sun_path`.
 * @throws {SocketError} if socket, bind or listen fails.
 */
export function listenUnix(path: string, backlog: number): number {
  const addr = sockaddr(path);
  const c = libc();
  const fd = newSocket();
  if (c.bind(fd, addr, addr.length) !== 0) {
    const e = errno();
    c.close(fd);
    throw new SocketError(`bind ${path}`, e);
  }
  if (c.listen(fd, backlog) !== 0) {
    const e = errno();
    c.close(fd);
    c.unlink(cString(path));
    throw new SocketError(`listen on ${path}`, e);
  }
  return fd;
}

/**
 * Connects to `path`. A unix connect completes at once or fails, so the
 * non-blocking socket never reports EINPROGRESS (a full backlog is EAGAIN).
 *
 * @throws {SocketError} with the errno (ECONNREFUSED for a stale file).
 */
export function connectUnix(path: string): number {
  const addr = sockaddr(path);
  const c = libc();
  const fd = newSocket();
  if (c.connect(fd, addr, addr.length) !== 0) {
    const e = errno();
    c.close(fd);
    throw new SocketError(`connect to ${path}`, e);
  }
  return fd;
}

/**
 * Accepts one pending connection as a non-blocking, close-on-exec socket.
 * Returns -1 when none is pending.
 *
 * @throws {SocketError} for any other failure (EMFILE, say).
 */
export function acceptUnix(listenFd: number): number {
  const fd = libc().accept4(
    listenFd,
    null,
    null,
    SOCK_NONBLOCK | SOCK_CLOEXEC,
  );
  if (fd >= 0) return fd;
  const e = errno();
  if (e === EAGAIN) return -1;
  throw new SocketError("accept a connection", e);
}

/**
 * Sends one message, with `passFd` attached unless it is -1. Returns false
 * if the socket buffer is full (nothing was sent).
 *
 * @throws {SocketError} if the peer is gone (EPIPE, ECONNRESET) or the
 * call fails otherwise.
 */
export function sendMessage(
  fd: number,
  value: bigint,
  passFd: number,
): boolean {
  const data = new Uint8Array(MESSAGE_BYTES);
  new DataView(data.buffer).setBigInt64(0, value, true);
  const iov = new Uint8Array(IOVEC_SIZE);
  const iovView = new DataView(iov.buffer);
  iovView.setBigUint64(0, address(data), true);
  iovView.setBigUint64(8, BigInt(MESSAGE_BYTES), true);
  const control = new Uint8Array(CMSG_SPACE_ONE_FD);
  const msg = new Uint8Array(MSGHDR_SIZE);
  const msgView = new DataView(msg.buffer);
  msgView.setBigUint64(16, address(iov), true);
  msgView.setBigUint64(24, 1n, true);
  if (passFd !== -1) {
    const cv = new DataView(control.buffer);
    cv.setBigUint64(0, BigInt(CMSG_LEN_ONE_FD), true);
    cv.setInt32(8, SOL_SOCKET, true);
    cv.setInt32(12, SCM_RIGHTS, true);
    cv.setInt32(CMSG_HEADER, passFd, true);
    msgView.setBigUint64(32, address(control), true);
    msgView.setBigUint64(40, BigInt(CMSG_SPACE_ONE_FD), true);
  }
  // data, iov and control are only reachable through the raw addresses in
  // msg; these locals keep them alive until the synchronous call returns.
  const sent = libc().sendmsg(fd, msg, MSG_NOSIGNAL);
  if (sent === BigInt(MESSAGE_BYTES)) return true;
  const e = errno();
  if (sent < 0n && e === EAGAIN) return false;
  // A stream socket takes all 8 bytes or none unless the buffer is nearly
  // full; a short send would desynchronize the peer, so treat it as fatal.
  throw new SocketError(
    `send a message on fd ${fd}`,
    sent < 0n ? e : EAGAIN,
  );
}

/** One received message and the descriptors that came with it. */
export interface ReceivedMessage {
  value: bigint;
  /** Descriptors attached (close-on-exec, owned by the caller). */
  fds: number[];
}

/**
 * Receives one message. Returns `"again"` when nothing is pending and
 * `"eof"` when the peer has closed.
 *
 * @throws {SocketError} on a failed call or a message cut short.
 */
export function receiveMessage(
  fd: number,
): ReceivedMessage | "again" | "eof" {
  const data = new Uint8Array(MESSAGE_BYTES);
  const iov = new Uint8Array(IOVEC_SIZE);
  const iovView = new DataView(iov.buffer);
  iovView.setBigUint64(0, address(data), true);
  iovView.setBigUint64(8, BigInt(MESSAGE_BYTES), true);
  const control = new Uint8Array(RECV_CONTROL_SIZE);
  const msg = new Uint8Array(MSGHDR_SIZE);
  const msgView = new DataView(msg.buffer);
  msgView.setBigUint64(16, address(iov), true);
  msgView.setBigUint64(24, 1n, true);
  msgView.setBigUint64(32, address(control), true);
  msgView.setBigUint64(40, BigInt(RECV_CONTROL_SIZE), true);
  const got = libc().recvmsg(fd, msg, MSG_CMSG_CLOEXEC);
  if (got < 0n) {
    const e = errno();
    if (e === EAGAIN) return "again";
    throw new SocketError(`receive a message on fd ${fd}`, e);
  }
  if (got === 0n) return "eof";
  const fds = controlFds(control, Number(msgView.getBigUint64(40, true)));
  if (got !== BigInt(MESSAGE_BYTES)) {
    for (const f of fds) libc().close(f);
    throw new Error(
      `Cannot receive a message on fd ${fd}: expected ${MESSAGE_BYTES} bytes, received ${got}`,
    );
  }
  return { value: new DataView(data.buffer).getBigInt64(0, true), fds };
}

/** The SCM_RIGHTS descriptors in the first `length` bytes of `control`. */
function controlFds(control: Uint8Array, length: number): number[] {
  const view = new DataView(control.buffer);
  const fds: number[] = [];
  let off = 0;
  while (off + CMSG_HEADER <= length) {
    const len = Number(view.getBigUint64(off, true));
    if (len < CMSG_HEADER || off + len > length) break;
    if (
      view.getInt32(off + 8, true) === SOL_SOCKET &&
      view.getInt32(off + 12, true) === SCM_RIGHTS
    ) {
      for (let p = off + CMSG_HEADER; p + 4 <= off + len; p += 4) {
        fds.push(view.getInt32(p, true));
      }
    }
    off += (len + 7) & ~7;
  }
  return fds;
}

/**
 * Reads and discards whatever is pending. Returns the byte count, 0 at end
 * of stream, or -1 when nothing is pending. Descriptors a peer attached are
 * closed by the kernel, since no control buffer is offered.
 *
 * ECONNRESET counts as end of stream: a peer that exits with our messages
 * still unread (QEMU killed mid-handshake, say) resets the connection.
 *
 * @throws {SocketError} on any other failed read.
 */
export function discardInput(fd: number, scratch: Uint8Array): number {
  const got = libc().read(fd, scratch, BigInt(scratch.length));
  if (got >= 0n) return Number(got);
  const e = errno();
  if (e === EAGAIN) return -1;
  if (e === ECONNRESET) return 0;
  throw new SocketError(`read from fd ${fd}`, e);
}

/**
 * Removes `path` if it is a socket nobody listens on (left by a server that
 * died). A live server there gets one connection that closes at once.
 *
 * @throws {Error} if the path is not a socket, a server answers there, or
 * the probe fails for another reason.
 */
export function removeStaleSocket(path: string): void {
  let info: Deno.FileInfo;
  try {
    info = Deno.lstatSync(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return;
    throw err;
  }
  if (!info.isSocket) {
    throw new Error(`Cannot listen on ${path}: it exists and is not a socket`);
  }
  let probe: number;
  try {
    probe = connectUnix(path);
  } catch (err) {
    if (err instanceof SocketError && err.errno === ECONNREFUSED) {
      Deno.removeSync(path);
      return;
    }
    throw new Error(
      `Cannot listen on ${path}: it exists and could not be probed`,
      { cause: err },
    );
  }
  libc().close(probe);
  throw new Error(
    `Cannot listen on ${path}: another server is listening there`,
  );
}

function address(buf: Uint8Array<ArrayBuffer>): bigint {
  return Deno.UnsafePointer.value(Deno.UnsafePointer.of(buf));
}
