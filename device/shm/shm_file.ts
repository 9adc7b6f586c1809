/**
 * Maps a file (a `/dev/shm` path, or a PCI BAR's sysfs `resource2`) as a
 * {@linkcode Region}, through FFI `open`, `ftruncate` and `mmap`.
 *
 * @module
 */

import {
  cString,
  describeErrno,
  EAGAIN,
  EEXIST,
  errno,
  libc,
  LOCK_EX,
  LOCK_NB,
  mapShared,
  O_CLOEXEC,
  O_CREAT,
  O_EXCL,
  O_RDWR,
  SEEK_END,
} from "./_libc.ts";
import { checkRegionSize, Region } from "./region.ts";

/** A mapping failed; `code` is the errno name where one applies. */
export class ShmError extends Error {
  override name = "ShmError";
  readonly code: string | undefined;
  constructor(message: string, options?: { code?: string; cause?: unknown }) {
    super(
      message,
      options?.cause === undefined ? {} : { cause: options.cause },
    );
    this.code = options?.code;
  }
}

/** How {@linkcode mapFile} treats the file. */
export interface MapFileOptions {
  /**
   * `"open"`: the file must exist; its size is the region size.
   * `"create"`: create the file with `size` bytes, or open it if it exists
   * (its size must then equal `size`).
   * @default {"open"}
   */
  mode?: "open" | "create";
  /** Region size in bytes; required with `mode: "create"`. */
  size?: number;
  /**
   * Take an exclusive lock on the file (flock), so that a second device
   * process cannot attach to a region one already serves. The lock goes
   * with the process, however it ends.
   * @default {false}
   */
  exclusive?: boolean;
}

/** A file mapped into this process. */
export class MappedFile {
  readonly path: string;
  readonly region: Region;
  /** Whether this mapping created the file (and so should remove it). */
  readonly created: boolean;
  #fd: number;
  #ptr: Deno.PointerObject;
  #unmapped = false;

  constructor(
    path: string,
    fd: number,
    ptr: Deno.PointerObject,
    size: number,
    created: boolean,
  ) {
    this.path = path;
    this.#fd = fd;
    this.#ptr = ptr;
    this.created = created;
    this.region = new Region(
      Deno.UnsafePointerView.getArrayBuffer(ptr, size),
      { kind: "mapped", address: Deno.UnsafePointer.value(ptr) as bigint },
    );
  }

  /** The open file descriptor (passed to QEMU by the ivshmem server). */
  get fd(): number {
    return this.#fd;
  }

  /**
   * Detaches the region's views, then unmaps and closes the file. With
   * `remove: true` also unlinks the path. Idempotent.
   */
  close(options: { remove?: boolean } = {}): void {
    if (this.#unmapped) return;
    if (this.region.borrowers > 0) {
      // Unmapping now would crash the thread still reading it.
      throw new Error(
        `Cannot unmap ${this.path}: ${this.region.borrowers} waker(s) still watch it; close them first`,
      );
    }
    this.#unmapped = true;
    // Detach first: a view touched after munmap would segfault the process.
    this.region.close();
    const c = libc();
    c.munmap(this.#ptr, BigInt(this.region.size));
    c.close(this.#fd);
    if (options.remove) c.unlink(cString(this.path));
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/**
 * Maps `path` read-write and shared.
 *
 * @throws {RangeError} if a size is not a power of two in range.
 * @throws {ShmError} if the file cannot be opened, sized or mapped; a file
 * this call created is removed again before it throws.
 */
export function mapFile(
  path: string,
  options: MapFileOptions = {},
): MappedFile {
  const mode = options.mode ?? "open";
  if (mode === "create") {
    if (options.size === undefined) {
      throw new TypeError("Cannot create a region file: no size given");
    }
    checkRegionSize(options.size);
  }
  const c = libc();
  const cpath = cString(path);
  let created = false;
  let fd = -1;
  if (mode === "create") {
    fd = c.open(cpath, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600);
    if (fd >= 0) created = true;
    else if (errno() !== EEXIST) throw openError(path, errno());
  }
  if (fd < 0) {
    fd = c.open(cpath, O_RDWR | O_CLOEXEC, 0);
    if (fd < 0) throw openError(path, errno());
  }
  try {
    if (options.exclusive && c.flock(fd, LOCK_EX | LOCK_NB) !== 0) {
      const e = errno();
      throw new ShmError(
        e === EAGAIN
          ? `Cannot use region file ${path}: it is in use by another process (is another ivsock device already serving it?)`
          : `Cannot lock region file ${path}: ${describeErrno(e)}`,
        { code: e === EAGAIN ? "ELOCKED" : errnoCode(e) },
      );
    }
    let size: number;
    if (created) {
      size = options.size!;
      if (c.ftruncate(fd, BigInt(size)) !== 0) {
        const e = errno();
        throw new ShmError(
          `Cannot size region file ${path} to ${size} bytes: ${
            describeErrno(e)
          }`,
          { code: errnoCode(e) },
        );
      }
    } else {
      size = fileSize(fd, path);
      if (options.size !== undefined && size !== options.size) {
        throw new ShmError(
          `Cannot map region file ${path}: it holds ${size} bytes, expected ${options.size}`,
          { code: "ESIZE" },
        );
      }
      checkRegionSize(size);
    }
    const ptr = mapShared(fd, size);
    if (ptr === null) {
      const e = errno();
      throw new ShmError(
        `Cannot map region file ${path}: ${describeErrno(e)}`,
        { code: errnoCode(e) },
      );
    }
    return new MappedFile(path, fd, ptr, size, created);
  } catch (err) {
    c.close(fd);
    if (created) c.unlink(cpath);
    throw err;
  }
}

/**
 * Maps an already-open descriptor read-write and shared: the shared memory
 * an ivshmem server passes over SCM_RIGHTS, say. Its size (from `lseek`) is
 * the region size.
 *
 * Takes ownership of `fd`: the mapping closes it on
 * {@linkcode MappedFile.close}, and a failed call closes it before throwing.
 * `name` only labels the mapping (its `path`) and error messages; there is
 * no file to remove, so do not close the result with `remove: true`.
 *
 * @example Map the memory an ivshmem client received
 * ```ts ignore
 * const client = await IvshmemClient.connect("/tmp/ivsock.sock");
 * const shm = mapFd(client.takeShmFd(), "ivshmem memory");
 * ```
 *
 * @throws {TypeError} if `fd` is not a non-negative integer (nothing is
 * closed then).
 * @throws {RangeError} if the size is not a power of two in range.
 * @throws {ShmError} if the size cannot be read or the mapping fails.
 */
export function mapFd(fd: number, name: string): MappedFile {
  if (!Number.isInteger(fd) || fd < 0) {
    throw new TypeError(
      `Cannot map a descriptor: expected a non-negative integer, received ${fd}`,
    );
  }
  const c = libc();
  try {
    const size = fileSize(fd, name);
    checkRegionSize(size);
    const ptr = mapShared(fd, size);
    if (ptr === null) {
      const e = errno();
      throw new ShmError(`Cannot map ${name}: ${describeErrno(e)}`, {
        code: errnoCode(e),
      });
    }
    return new MappedFile(name, fd, ptr, size, false);
  } catch (err) {
    c.close(fd);
    throw err;
  }
}

function fileSize(fd: number, path: string): number {
  const end = libc().lseek(fd, 0n, SEEK_END);
  if (end < 0n) {
    const e = errno();
    throw new ShmError(`Cannot read the size of ${path}: ${describeErrno(e)}`, {
      code: errnoCode(e),
    });
  }
  return Number(end);
}

function openError(path: string, code: number): ShmError {
  return new ShmError(
    `Cannot open region file ${path}: ${describeErrno(code)}`,
    {
      code: errnoCode(code),
    },
  );
}

function errnoCode(code: number): string {
  return describeErrno(code).split(" ")[0]!;
}
