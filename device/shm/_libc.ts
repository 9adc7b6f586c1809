/**
 * The libc calls ivsock makes through Deno FFI, loaded once on first use and
 * never closed (closing while a nonblocking call is pending crashes Deno).
 *
 * errno is thread-local on glibc, so it is read through `__errno_location()`
 * right after a synchronous call; nonblocking calls run on another thread and
 * must not rely on it.
 *
 * @module
 */

const SYMBOLS = {
  open: { parameters: ["buffer", "i32", "u32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  ftruncate: { parameters: ["i32", "i64"], result: "i32" },
  lseek: { parameters: ["i32", "i64", "i32"], result: "i64" },
  unlink: { parameters: ["buffer"], result: "i32" },
  rmdir: { parameters: ["buffer"], result: "i32" },
  mmap: {
    parameters: ["pointer", "usize", "i32", "i32", "i32", "i64"],
    result: "pointer",
  },
  munmap: { parameters: ["pointer", "usize"], result: "i32" },
  strerror: { parameters: ["i32"], result: "pointer" },
  flock: { parameters: ["i32", "i32"], result: "i32" },
  // Eventfds and AF_UNIX sockets for the ivshmem server (device/notify).
  eventfd: { parameters: ["u32", "i32"], result: "i32" },
  read: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  write: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  // fcntl is variadic; every call we make passes one int, which the x86-64
  // and arm64 Linux ABIs pass exactly like a fixed int argument.
  fcntl: { parameters: ["i32", "i32", "i32"], result: "i32" },
  socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
  bind: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  listen: { parameters: ["i32", "i32"], result: "i32" },
  accept4: { parameters: ["i32", "pointer", "pointer", "i32"], result: "i32" },
  connect: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  sendmsg: { parameters: ["i32", "buffer", "i32"], result: "isize" },
  recvmsg: { parameters: ["i32", "buffer", "i32"], result: "isize" },
  // poll on a worker thread, so a wait never blocks the event loop. Its
  // errno is lost (another thread), so callers treat -1 as "nothing yet"
  // (it is EINTR in practice) and rely on revents for fd errors.
  poll_nonblocking: {
    name: "poll",
    parameters: ["buffer", "usize", "i32"],
    result: "i32",
    nonblocking: true,
  },
  __errno_location: { parameters: [], result: "pointer" },
  // The data plane's own sockets (proxy/fd_socket.ts) and their readiness
  // (device/notify/io_poller.ts). Buffers are views into JavaScript memory
  // or the mapped region; every call is non-blocking.
  epoll_create1: { parameters: ["i32"], result: "i32" },
  epoll_ctl: { parameters: ["i32", "i32", "i32", "buffer"], result: "i32" },
  epoll_wait: { parameters: ["i32", "buffer", "i32", "i32"], result: "i32" },
  // ssize_t read as its low 32 bits (the x86-64 and arm64 ABIs return it
  // in one register, so this is exact for our transfers, all under 2 GiB):
  // a number, where "isize" would allocate a BigInt on every call.
  recv: { parameters: ["i32", "buffer", "usize", "i32"], result: "i32" },
  send: { parameters: ["i32", "buffer", "usize", "i32"], result: "i32" },
  // Reads into several ranges of the region at once (a packet's payload
  // areas, around their headers); low 32 bits as for recv.
  readv: { parameters: ["i32", "buffer", "i32"], result: "i32" },
  shutdown: { parameters: ["i32", "i32"], result: "i32" },
  accept4_addr: {
    name: "accept4",
    parameters: ["i32", "buffer", "buffer", "i32"],
    result: "i32",
  },
  getsockopt: {
    parameters: ["i32", "i32", "i32", "buffer", "buffer"],
    result: "i32",
  },
  setsockopt: {
    parameters: ["i32", "i32", "i32", "buffer", "u32"],
    result: "i32",
  },
  getsockname: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  getpeername: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  sched_yield: { parameters: [], result: "i32" },
} as const satisfies Deno.ForeignLibraryInterface;

/** The loaded symbols. */
export type Libc = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];

let lib: Deno.DynamicLibrary<typeof SYMBOLS> | undefined;

/** Loads libc on first call. Throws if FFI is not permitted. */
export function libc(): Libc {
  if (lib === undefined) {
    if (Deno.build.os !== "linux") {
      throw new Error(
        `Cannot use shared memory: ivsock maps regions through Linux libc, running on ${Deno.build.os}`,
      );
    }
    lib = Deno.dlopen("libc.so.6", SYMBOLS);
  }
  return lib.symbols;
}

// Linux values, identical on x86-64 and arm64 (asm-generic and x86 agree for
// these).
export const O_RDWR = 0o2;
export const O_CREAT = 0o100;
export const O_EXCL = 0o200;
export const O_CLOEXEC = 0o2000000;
export const PROT_READ = 1;
export const PROT_WRITE = 2;
export const MAP_SHARED = 1;
export const SEEK_END = 2;
export const EEXIST = 17;
export const LOCK_EX = 2;
export const LOCK_NB = 4;
export const EAGAIN = 11;
export const ECONNREFUSED = 111;
export const ECONNRESET = 104;
export const EPIPE = 32;
export const O_NONBLOCK = 0o4000;
export const F_GETFL = 3;
export const F_SETFL = 4;
export const F_DUPFD_CLOEXEC = 1030;
export const EFD_NONBLOCK = 0o4000;
export const EFD_CLOEXEC = 0o2000000;
export const AF_UNIX = 1;
export const SOCK_STREAM = 1;
export const SOCK_NONBLOCK = 0o4000;
export const SOCK_CLOEXEC = 0o2000000;
export const SOL_SOCKET = 1;
export const SCM_RIGHTS = 1;
export const MSG_NOSIGNAL = 0x4000;
export const SHUT_WR = 1;
export const IPPROTO_TCP = 6;
export const TCP_NODELAY = 1;
export const MSG_CMSG_CLOEXEC = 0x40000000;
export const POLLIN = 0x1;
export const POLLOUT = 0x4;
export const POLLERR = 0x8;
export const POLLHUP = 0x10;
export const POLLNVAL = 0x20;

const ERRNO_NAMES: Record<number, string> = {
  1: "EPERM",
  2: "ENOENT",
  9: "EBADF",
  12: "ENOMEM",
  13: "EACCES",
  17: "EEXIST",
  19: "ENODEV",
  20: "ENOTDIR",
  21: "EISDIR",
  22: "EINVAL",
  24: "EMFILE",
  28: "ENOSPC",
  30: "EROFS",
  36: "ENAMETOOLONG",
  4: "EINTR",
  11: "EAGAIN",
  32: "EPIPE",
  88: "ENOTSOCK",
  98: "EADDRINUSE",
  104: "ECONNRESET",
  109: "ETOOMANYREFS",
  111: "ECONNREFUSED",
};

/**
 * `mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)`: the one
 * mapping every region and register window uses. Returns null on failure,
 * with errno set.
 */
export function mapShared(fd: number, size: number): Deno.PointerObject | null {
  const ptr = libc().mmap(
    null,
    BigInt(size),
    PROT_READ | PROT_WRITE,
    MAP_SHARED,
    fd,
    0n,
  );
  // MAP_FAILED is (void *)-1.
  if (ptr === null || Deno.UnsafePointer.value(ptr) === 0xffffffffffffffffn) {
    return null;
  }
  return ptr;
}

/** errno of the last failed synchronous call on this thread. */
export function errno(): number {
  const p = libc().__errno_location();
  return p === null ? 0 : new Deno.UnsafePointerView(p).getInt32();
}

/** The C library's text for an errno value: `"No such file or directory"`. */
export function strerror(code: number): string {
  const p = libc().strerror(code);
  return p === null
    ? `unknown error ${code}`
    : new Deno.UnsafePointerView(p).getCString();
}

/** `"ENOENT (No such file or directory)"` for an errno value. */
export function describeErrno(code: number): string {
  return `${ERRNO_NAMES[code] ?? `errno ${code}`} (${strerror(code)})`;
}

/** A NUL-terminated copy of a path for FFI. */
export function cString(s: string): Uint8Array<ArrayBuffer> {
  const encoded = new TextEncoder().encode(s);
  const out = new Uint8Array(encoded.length + 1);
  out.set(encoded);
  return out;
}

/** One descriptor to {@linkcode pollOnce}, and the events of interest. */
export interface PollRequest {
  fd: number;
  /** `POLLIN`, `POLLOUT` or both. */
  events: number;
}

/** `sizeof(struct pollfd)`: int fd, short events, short revents. */
const POLLFD_SIZE = 8;

/**
 * One `poll()` on a worker thread, so the event loop keeps running.
 * Resolves to each request's `revents`, all 0 on timeout or EINTR.
 *
 * `timeoutMs` should be short: a pending call keeps a blocking-pool thread
 * and counts as an op for the test sanitizer until it returns, so callers
 * loop over short slices (or wake it through an eventfd in the set).
 */
export async function pollOnce(
  requests: readonly PollRequest[],
  timeoutMs: number,
): Promise<number[]> {
  const buf = new Uint8Array(POLLFD_SIZE * requests.length);
  const view = new DataView(buf.buffer);
  requests.forEach((r, i) => {
    view.setInt32(i * POLLFD_SIZE, r.fd, true);
    view.setInt16(i * POLLFD_SIZE + 4, r.events, true);
  });
  // `buf` stays referenced by this frame until the call returns: the worker
  // thread writes revents into it.
  const n = await libc().poll_nonblocking(
    buf,
    BigInt(requests.length),
    Math.max(0, Math.ceil(timeoutMs)),
  );
  if (n <= 0) return requests.map(() => 0);
  return requests.map((_, i) => view.getUint16(i * POLLFD_SIZE + 6, true));
}
