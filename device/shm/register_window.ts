/**
 * A mapped window of device registers: a PCI BAR's sysfs `resource0` (the
 * ivshmem doorbell registers, 256 bytes) mapped one page long, since mmap
 * works in pages. Only aligned 32-bit accesses inside the BAR's real size
 * are allowed, because that is what the hardware (or QEMU) decodes.
 *
 * @module
 */

import {
  cString,
  describeErrno,
  errno,
  libc,
  mapShared,
  O_CLOEXEC,
  O_RDWR,
  SEEK_END,
} from "./_libc.ts";
import { ShmError } from "./shm_file.ts";

const PAGE = 4096;

/** 32-bit registers mapped from a file. */
export class RegisterWindow {
  readonly path: string;
  /** Bytes of registers (the BAR size, at most a page). */
  readonly size: number;
  #fd: number;
  #ptr: Deno.PointerObject;
  #view: DataView | null;

  private constructor(
    path: string,
    fd: number,
    ptr: Deno.PointerObject,
    size: number,
  ) {
    this.path = path;
    this.size = size;
    this.#fd = fd;
    this.#ptr = ptr;
    this.#view = new DataView(Deno.UnsafePointerView.getArrayBuffer(ptr, PAGE));
  }

  /**
   * Maps `path` (e.g. `/sys/bus/pci/devices/0000:00:04.0/resource0`).
   *
   * @throws {ShmError} when it cannot be opened or mapped.
   */
  static open(path: string): RegisterWindow {
    const c = libc();
    const fd = c.open(cString(path), O_RDWR | O_CLOEXEC, 0);
    if (fd < 0) {
      throw new ShmError(
        `Cannot open registers ${path}: ${describeErrno(errno())}`,
      );
    }
    const end = c.lseek(fd, 0n, SEEK_END);
    const size = end > 0n ? Math.min(Number(end), PAGE) : PAGE;
    const ptr = mapShared(fd, PAGE);
    if (ptr === null) {
      const e = errno();
      c.close(fd);
      throw new ShmError(`Cannot map registers ${path}: ${describeErrno(e)}`);
    }
    return new RegisterWindow(path, fd, ptr, size);
  }

  /** Reads the 32-bit register at `offset`. */
  read32(offset: number): number {
    return this.#checked(offset).getUint32(offset, true);
  }

  /** Writes the 32-bit register at `offset`. */
  write32(offset: number, value: number): void {
    this.#checked(offset).setUint32(offset, value >>> 0, true);
  }

  /** Unmaps and closes. Idempotent. */
  close(): void {
    if (this.#view === null) return;
    const buffer = this.#view.buffer as ArrayBuffer;
    this.#view = null;
    structuredClone(buffer, { transfer: [buffer] }); // detach before unmapping
    libc().munmap(this.#ptr, BigInt(PAGE));
    libc().close(this.#fd);
  }

  #checked(offset: number): DataView {
    if (this.#view === null) {
      throw new RangeError(`Cannot access registers ${this.path}: closed`);
    }
    if (
      !Number.isInteger(offset) || offset < 0 || offset + 4 > this.size ||
      offset % 4 !== 0
    ) {
      throw new RangeError(
        `Register offset ${offset} is not an aligned 32-bit register inside ${this.size} bytes`,
      );
    }
    return this.#view;
  }
}
