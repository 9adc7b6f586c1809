/**
 * Readiness of the descriptors the data plane owns (sockets it reads and
 * writes through FFI), checked by the same loop that services the rings.
 *
 * An {@linkcode IoPoller} is an edge-triggered epoll set. The ring loop
 * calls {@linkcode IoPoller.dispatch} on every turn, which asks the kernel
 * what became ready without waiting and calls each descriptor's handler;
 * when the loop sleeps, its waker's worker blocks on {@linkcode IoPoller.fd}
 * (an epoll descriptor is readable while events are ready), so a socket
 * event wakes the loop like a ring change does.
 *
 * Why not Deno's own sockets: their readiness reaches JavaScript only
 * through Deno's event loop, which cannot also watch ring memory, so a
 * packet crossed two thread wake-ups on its way from a socket to the ring
 * and back. With the loop watching both, a 64-byte round trip through the
 * sidecar and the agent took 6-7x a TCP loopback round trip before and
 * about 2x in a prototype after (docs/performance.md).
 *
 * Edge-triggered, because the loop only reads a socket when the layer above
 * wants bytes: a level-triggered socket with unread data would report
 * itself on every turn, and keep the waker's worker from sleeping.
 *
 * @module
 */

import type { LogFn } from "../log.ts";
import { describeErrno, errno, libc } from "../shm/_libc.ts";

/** epoll event bits (Linux uapi `eventpoll.h`). */
export const EPOLLIN = 0x001;
export const EPOLLOUT = 0x004;
export const EPOLLERR = 0x008;
export const EPOLLHUP = 0x010;
export const EPOLLRDHUP = 0x2000;
export const EPOLLET = 0x80000000;

const EPOLL_CTL_ADD = 1;
const EPOLL_CTL_DEL = 2;
const EPOLL_CLOEXEC = 0o2000000;

/**
 * `struct epoll_event { u32 events; u64 data; }` is packed on x86-64
 * (12 bytes, data at 4) and naturally aligned elsewhere (16, data at 8).
 */
const EVENT_SIZE = Deno.build.arch === "x86_64" ? 12 : 16;
const DATA_OFFSET = Deno.build.arch === "x86_64" ? 4 : 8;

/** Events taken per `epoll_wait`; more simply wait for the next turn. */
const MAX_EVENTS = 256;

/** Called with the ready bits (EPOLLIN, EPOLLOUT, EPOLLERR, ...). */
export type IoHandler = (events: number) => void;

interface Entry {
  handler: IoHandler;
  onClose: (() => void) | undefined;
}

/** An edge-triggered epoll set and the handler of each descriptor in it. */
export class IoPoller {
  readonly fd: number;
  #entries = new Map<number, Entry>();
  #again = new Set<number>();
  #events = new Uint8Array(EVENT_SIZE * MAX_EVENTS);
  #view = new DataView(this.#events.buffer);
  #one = new Uint8Array(EVENT_SIZE);
  #oneView = new DataView(this.#one.buffer);
  #closed = false;
  /** The first error a handler threw during the current dispatch. */
  #failure: { err: unknown } | null = null;

  /** @throws {Error} if the kernel refuses an epoll descriptor (EMFILE). */
  constructor() {
    const fd = libc().epoll_create1(EPOLL_CLOEXEC);
    if (fd < 0) {
      throw new Error(`Cannot create an epoll set: ${describeErrno(errno())}`);
    }
    this.fd = fd;
  }

  /** Descriptors registered. */
  get size(): number {
    return this.#entries.size;
  }

  /**
   * Watches `fd` for `events` (edge-triggered: EPOLLET is added). The
   * handler runs from {@linkcode dispatch} with the bits that fired;
   * `onClose` runs if the poller closes while `fd` is still in it, so that
   * its owner can close it and fail what waits on it.
   *
   * @throws {Error} with the errno when the kernel refuses.
   */
  add(
    fd: number,
    events: number,
    handler: IoHandler,
    onClose?: () => void,
  ): void {
    if (this.#closed) {
      throw new Error(`Cannot watch descriptor ${fd}: the poller is closed`);
    }
    this.#oneView.setUint32(0, (events | EPOLLET) >>> 0, true);
    this.#oneView.setUint32(DATA_OFFSET, fd, true);
    if (libc().epoll_ctl(this.fd, EPOLL_CTL_ADD, fd, this.#one) !== 0) {
      throw new Error(
        `Cannot watch descriptor ${fd}: ${describeErrno(errno())}`,
      );
    }
    this.#entries.set(fd, { handler, onClose });
  }

  /**
   * Stops watching `fd`. Call it before closing the descriptor: the kernel
   * drops a closed one by itself, but a number reused meanwhile would find
   * the old handler.
   */
  remove(fd: number): void {
    if (!this.#forget(fd)) return;
    libc().epoll_ctl(this.fd, EPOLL_CTL_DEL, fd, this.#one);
  }

  /**
   * Stops watching `fd` and closes it, in one system call: closing a
   * descriptor takes it out of the epoll set by itself (epoll(7)), so the
   * EPOLL_CTL_DEL that {@linkcode remove} makes first is skipped (one of
   * the 20-odd calls a proxied connection costs each process). Only for a
   * descriptor this process holds once: a duplicate would keep it watched.
   */
  closeWatched(fd: number): void {
    this.#forget(fd);
    libc().close(fd);
  }

  /** Drops `fd`'s handler; returns whether it was in the set. */
  #forget(fd: number): boolean {
    this.#again.delete(fd);
    return this.#entries.delete(fd);
  }

  /**
   * Calls `fd`'s handler again on the next {@linkcode dispatch} with
   * EPOLLIN, without a new edge: for a handler that stopped before it had
   * taken everything (a listener that accepted its batch).
   */
  again(fd: number): void {
    if (this.#entries.has(fd)) this.#again.add(fd);
  }

  /** Whether a dispatch has work without asking the kernel. */
  get hasAgain(): boolean {
    return this.#again.size > 0;
  }

  /**
   * Runs the handlers of every descriptor that became ready, without
   * waiting. Returns how many handlers ran.
   *
   * @throws the first error a handler threw, after every other handler
   * ran: an edge not handled now would never be reported again.
   */
  dispatch(): number {
    if (this.#closed) return 0;
    let ran = 0;
    if (this.#again.size > 0) {
      const again = [...this.#again];
      this.#again.clear();
      for (const fd of again) ran += this.#call(fd, EPOLLIN);
    }
    const n = libc().epoll_wait(this.fd, this.#events, MAX_EVENTS, 0);
    for (let i = 0; i < n; i++) {
      const at = i * EVENT_SIZE;
      const fd = this.#view.getUint32(at + DATA_OFFSET, true);
      ran += this.#call(fd, this.#view.getUint32(at, true));
    }
    const failure = this.#failure;
    this.#failure = null;
    if (failure !== null) throw failure.err;
    return ran;
  }

  /**
   * Runs `fd`'s handler, keeping the first error for the end of the
   * dispatch; returns 1, or 0 when `fd` was removed during this dispatch.
   * (A method, not a closure: dispatch runs on every turn of the loop.)
   */
  #call(fd: number, events: number): number {
    const entry = this.#entries.get(fd);
    if (entry === undefined) return 0;
    try {
      entry.handler(events);
    } catch (err) {
      this.#failure ??= { err };
    }
    return 1;
  }

  /**
   * Closes the epoll descriptor, after telling the owner of every
   * descriptor still in it (their `onClose`).
   */
  close(): void {
    if (this.#closed) return;
    for (const fd of [...this.#entries.keys()]) {
      const entry = this.#entries.get(fd);
      if (entry === undefined) continue;
      this.remove(fd);
      entry.onClose?.();
    }
    this.#closed = true;
    this.#again.clear();
    libc().close(this.fd);
  }
}

/**
 * What a ring loop calls on each turn: runs the handlers of `io`'s ready
 * descriptors and returns how many ran. A handler that throws is a bug in
 * the layer above; it is logged and the loop carries on.
 */
export function serveSockets(io: IoPoller | null, log: LogFn): number {
  if (io === null) return 0;
  try {
    return io.dispatch();
  } catch (err) {
    log(
      "error",
      `socket handler error: ${err instanceof Error ? err.message : err}`,
    );
    return 1;
  }
}
