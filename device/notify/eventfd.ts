/**
 * A Linux eventfd: the doorbell both directions of ivshmem ring. A writer
 * adds to a 64-bit counter; a reader takes the whole count and resets it.
 *
 * The descriptor is non-blocking, so {@linkcode EventFd.drain} never stalls
 * the event loop; {@linkcode EventFd.wait} polls it on a worker thread in
 * short slices, so a wait always ends within one slice of being abandoned.
 *
 * @module
 */

import {
  describeErrno,
  EAGAIN,
  EFD_CLOEXEC,
  EFD_NONBLOCK,
  errno,
  F_GETFL,
  F_SETFL,
  libc,
  O_NONBLOCK,
  POLLERR,
  POLLIN,
  POLLNVAL,
  pollOnce,
} from "../shm/_libc.ts";

/**
 * Longest single `poll()` a wait makes. It bounds how long a wait that
 * nobody wakes keeps a worker thread (and a sanitizer-visible op); close()
 * does not rely on it, as it signals the counter to end a wait at once.
 */
const POLL_SLICE_MS = 250;

/** The counter saturates at 2^64 - 2; a write that would pass it fails. */
const MAX_SIGNAL = 0xffff_ffff_ffff_fffen;

/** Every eventfd read and write moves exactly one u64. */
const COUNTER_BYTES = 8;

/** A non-blocking, close-on-exec eventfd owned by this object. */
export class EventFd {
  #fd: number;
  #closed = false;
  #closing: Promise<void> | undefined;
  #waits = new Set<Promise<boolean>>();
  #buf = new BigUint64Array(1);

  private constructor(fd: number) {
    this.#fd = fd;
  }

  /**
   * Creates an eventfd with a zero counter.
   *
   * @throws {Error} if the kernel refuses (for example EMFILE).
   */
  static create(): EventFd {
    const fd = libc().eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (fd < 0) {
      throw new Error(`Cannot create an eventfd: ${describeErrno(errno())}`);
    }
    return new EventFd(fd);
  }

  /**
   * Takes ownership of an eventfd descriptor (one received over
   * SCM_RIGHTS, say) and makes it non-blocking. The file status flag is
   * shared with every other holder of the same open file, which is what the
   * ivshmem peers expect anyway.
   *
   * @throws {TypeError} if `fd` is not a non-negative integer.
   * @throws {Error} if `fd` is not an open eventfd.
   */
  static fromFd(fd: number): EventFd {
    if (!Number.isInteger(fd) || fd < 0) {
      throw new TypeError(
        `Cannot wrap an eventfd: expected a non-negative integer descriptor, received ${fd}`,
      );
    }
    let target: string;
    try {
      target = Deno.readLinkSync(`/proc/self/fd/${fd}`);
    } catch {
      throw new Error(`Cannot wrap fd ${fd} as an eventfd: it is not open`);
    }
    if (target !== "anon_inode:[eventfd]") {
      throw new Error(
        `Cannot wrap fd ${fd} as an eventfd: it is ${target}`,
      );
    }
    const c = libc();
    const flags = c.fcntl(fd, F_GETFL, 0);
    if (flags < 0 || c.fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
      throw new Error(
        `Cannot make eventfd ${fd} non-blocking: ${describeErrno(errno())}`,
      );
    }
    return new EventFd(fd);
  }

  /** The descriptor, for passing to another process. -1 once closed. */
  get fd(): number {
    return this.#closed ? -1 : this.#fd;
  }

  /** Whether {@linkcode EventFd.close} has been called. */
  get closed(): boolean {
    return this.#closed;
  }

  /**
   * Adds `n` to the counter, waking any waiter.
   *
   * @throws {RangeError} if `n` is outside 1..2^64-2.
   * @throws {Error} if closed, or the counter would overflow (the reader
   * has not drained it).
   */
  signal(n: bigint = 1n): void {
    if (typeof n !== "bigint" || n < 1n || n > MAX_SIGNAL) {
      throw new RangeError(
        `Cannot signal an eventfd: count must be a bigint from 1 to 2^64-2, received ${n}`,
      );
    }
    this.#checkOpen("signal");
    this.#buf[0] = n;
    const bytes = new Uint8Array(this.#buf.buffer);
    const wrote = libc().write(this.#fd, bytes, BigInt(COUNTER_BYTES));
    if (wrote !== BigInt(COUNTER_BYTES)) {
      const e = errno();
      throw new Error(
        e === EAGAIN
          ? `Cannot signal eventfd ${this.#fd}: its counter would overflow`
          : `Cannot signal eventfd ${this.#fd}: ${describeErrno(e)}`,
      );
    }
  }

  /**
   * Takes the counter and resets it to zero. Returns 0n when nothing is
   * pending; never blocks.
   *
   * @throws {Error} if closed, or the read fails with anything but EAGAIN.
   */
  drain(): bigint {
    this.#checkOpen("drain");
    const bytes = new Uint8Array(this.#buf.buffer);
    const got = libc().read(this.#fd, bytes, BigInt(COUNTER_BYTES));
    if (got === BigInt(COUNTER_BYTES)) return this.#buf[0]!;
    const e = errno();
    if (got < 0n && e === EAGAIN) return 0n;
    throw new Error(
      `Cannot drain eventfd ${this.#fd}: ${
        got < 0n ? describeErrno(e) : `short read of ${got} bytes`
      }`,
    );
  }

  /**
   * Resolves `true` once the counter is non-zero (without draining it), or
   * `false` after `timeoutMs` or when the eventfd is closed meanwhile.
   *
   * @throws {RangeError} if `timeoutMs` is negative or not a number.
   * @throws {Error} if closed when called, or the descriptor turned invalid.
   */
  wait(timeoutMs: number): Promise<boolean> {
    if (!(timeoutMs >= 0)) {
      throw new RangeError(
        `Cannot wait on an eventfd: timeout must be a non-negative number of milliseconds, received ${timeoutMs}`,
      );
    }
    this.#checkOpen("wait on");
    const p = this.#poll(timeoutMs);
    this.#waits.add(p);
    const forget = () => this.#waits.delete(p);
    p.then(forget, forget);
    return p;
  }

  async #poll(timeoutMs: number): Promise<boolean> {
    const deadline = performance.now() + timeoutMs;
    const fd = this.#fd;
    while (true) {
      const left = deadline - performance.now();
      const [revents = 0] = await pollOnce(
        [{ fd, events: POLLIN }],
        Math.max(0, Math.min(left, POLL_SLICE_MS)),
      );
      // close() signals the counter to end this call; that wake-up is ours,
      // not the caller's.
      if (this.#closed) return false;
      if (revents & POLLIN) return true;
      if (revents & (POLLNVAL | POLLERR)) {
        throw new Error(
          `Cannot wait on eventfd ${fd}: poll reported revents 0x${
            revents.toString(16)
          }`,
        );
      }
      if (deadline - performance.now() <= 0) return false;
    }
  }

  /**
   * Closes the descriptor. A pending {@linkcode EventFd.wait} resolves
   * `false`; the returned promise settles once it has, so no poll is left
   * running on the descriptor (and its number cannot be reused under it).
   * Idempotent.
   */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    this.#closed = true;
    if (this.#waits.size > 0) {
      // Wake the poll at once rather than after its slice. Only done when a
      // wait is pending: an eventfd shared with a peer must not see a
      // spurious count when it is merely closed.
      this.#buf[0] = 1n;
      libc().write(
        this.#fd,
        new Uint8Array(this.#buf.buffer),
        BigInt(COUNTER_BYTES),
      );
      await Promise.allSettled([...this.#waits]);
    }
    libc().close(this.#fd);
  }

  /** Same as {@linkcode EventFd.close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  #checkOpen(action: string): void {
    if (this.#closed) {
      throw new Error(`Cannot ${action} eventfd ${this.#fd}: it is closed`);
    }
  }
}
