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
  mmap: {
    parameters: ["pointer", "usize", "i32", "i32", "i32", "i64"],
    result: "pointer",
  },
  munmap: { parameters: ["pointer", "usize"], result: "i32" },
  strerror: { parameters: ["i32"], result: "pointer" },
  __errno_location: { parameters: [], result: "pointer" },
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
};

/** errno of the last failed synchronous call on this thread. */
export function errno(): number {
  const p = libc().__errno_location();
  return p === null ? 0 : new Deno.UnsafePointerView(p).getInt32();
}

/** `"ENOENT (No such file or directory)"` for an errno value. */
export function describeErrno(code: number): string {
  const p = libc().strerror(code);
  const text = p === null
    ? "unknown error"
    : new Deno.UnsafePointerView(p).getCString();
  return `${ERRNO_NAMES[code] ?? `errno ${code}`} (${text})`;
}

/** A NUL-terminated copy of a path for FFI. */
export function cString(s: string): Uint8Array<ArrayBuffer> {
  const encoded = new TextEncoder().encode(s);
  const out = new Uint8Array(encoded.length + 1);
  out.set(encoded);
  return out;
}
