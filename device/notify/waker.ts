/**
 * Sleeping until the other side does something: the notification primitive
 * of both roles.
 *
 * A {@linkcode Waker} runs a worker thread that watches ring words in the
 * region (polling mode, ivshmem-plain) and optionally eventfds (doorbell
 * mode), spinning briefly after activity and backing off to a slow poll when
 * idle. The main thread awaits {@linkcode Waker.wait}, which resolves when a
 * watched word changes, an eventfd fires, {@linkcode Waker.poke} is called
 * from the main thread itself, or the timeout passes.
 *
 * @module
 */

import type { Region } from "../shm/region.ts";
import { EventFd } from "./eventfd.ts";
import {
  type BackoffOptions,
  CTL_ACTIVITY,
  CTL_CONTROL,
  CTL_DEEP,
  CTL_FDS,
  CTL_IO_FD,
  CTL_LENGTH,
  CTL_LOADED,
  CTL_MUTED,
  CTL_PARKED,
  CTL_PENDING,
  CTL_SEEN,
  CTL_SEEN_SET,
  CTL_SLEEP,
  CTL_STOP,
  CTL_TABLE,
  CTL_VERSION,
  CTL_WAITING,
  CTL_WORDS,
  MAX_FDS,
  MAX_WORDS,
  type WakerInit,
  type WakerMemory,
} from "./_waker_protocol.ts";

export type { BackoffOptions } from "./_waker_protocol.ts";

/** Why {@linkcode Waker.wait} returned. */
export type WakeReason = "changed" | "poked" | "timeout";

/** A word in the region to watch: its byte offset and width. */
export interface WatchedWord {
  offset: number;
  width: 2 | 4;
}

/**
 * Default back-off. For 2 ms after a change (or the main thread's own work)
 * the worker spins, calling sched_yield(2) between looks so that any other
 * runnable thread goes first; then it polls every 0.1 ms for 50 ms,
 * sleeping on a futex (or in ppoll(2) when it watches descriptors) with its
 * timer slack cut to 1 us so that such sleeps are accurate, then every
 * 10 ms. The idle cost is one wake-up per 10 ms.
 *
 * The ring loops spin on their own thread instead (`LoopPacer`, which also
 * serves the sockets, so nothing needs waking while traffic flows) and give
 * their waker `spinMs: 0`: it takes over only once the loop sleeps. A
 * worker's spin still cost a wake-up of the main thread per packet, 15-20 us
 * on these virtual machines (docs/performance.md).
 */
export const DEFAULT_BACKOFF: BackoffOptions = {
  spinMs: 2,
  shortSleepMs: 0.1,
  shortPhaseMs: 50,
  idleSleepMs: 10,
};

/** Main-thread side of the watcher. */
export class Waker {
  readonly region: Region;
  #worker: Worker;
  #ctl: Int32Array;
  #resolve: ((r: WakeReason) => void) | null = null;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #poked = false;
  #control: EventFd | null = null;
  #closed: Promise<void> | null = null;
  #stopped: PromiseWithResolvers<void> = Promise.withResolvers<void>();
  #wakeLine: WakeLine;
  #words: WatchedWord[] = [];

  /**
   * Starts the worker over `region`.
   *
   * @throws {TypeError} if the region's memory cannot be shared with a
   * worker (a plain private `ArrayBuffer`).
   */
  constructor(region: Region, backoff: Partial<BackoffOptions> = {}) {
    const memory = workerMemory(region);
    this.region = region;
    const control = new SharedArrayBuffer(4 * CTL_LENGTH);
    this.#ctl = new Int32Array(control);
    Atomics.store(this.#ctl, CTL_CONTROL, -1);
    Atomics.store(this.#ctl, CTL_IO_FD, -1);
    this.#worker = new Worker(new URL("./_waker_worker.ts", import.meta.url), {
      type: "module",
    });
    this.#wakeLine = new WakeLine(() => this.#wake("changed"));
    this.#worker.onmessage = (e: MessageEvent<string>) => {
      if (e.data === "stopped") this.#stopped.resolve();
      else this.#wake("changed");
    };
    this.#worker.onerror = (e) => {
      // A crashed watcher must not leave the main thread asleep forever; the
      // caller's timeout still bounds each wait, so report and carry on.
      e.preventDefault();
      console.error(`ivsock: waker worker failed: ${e.message}`);
      this.#stopped.resolve();
    };
    region.retain();
    this.#worker.postMessage(
      {
        memory,
        control,
        options: { ...DEFAULT_BACKOFF, ...backoff },
        ...(this.#wakeLine.path === undefined
          ? {}
          : { wakeSocket: this.#wakeLine.path }),
      } satisfies WakerInit,
    );
  }

  /**
   * Replaces what the worker watches: ring words, doorbell eventfds (which
   * it drains when they fire) and `ioFd`, a descriptor that is readable
   * while the main thread has sockets to serve (an `IoPoller`'s epoll set;
   * the worker only looks). Offsets must be aligned to their width and
   * inside the region.
   *
   * @throws {RangeError} on too many entries or a bad offset.
   */
  watch(
    words: readonly WatchedWord[],
    eventFds: readonly number[] = [],
    ioFd = -1,
  ): void {
    if (words.length > MAX_WORDS || eventFds.length > MAX_FDS) {
      throw new RangeError(
        `A waker watches at most ${MAX_WORDS} words and ${MAX_FDS} eventfds, received ${words.length} and ${eventFds.length}`,
      );
    }
    for (const w of words) {
      if (
        !this.region.contains(w.offset, w.width) || w.offset % w.width !== 0
      ) {
        throw new RangeError(
          `Cannot watch offset ${w.offset}: not a ${w.width}-byte aligned word inside the region`,
        );
      }
    }
    const ctl = this.#ctl;
    this.#words = [...words];
    Atomics.store(ctl, CTL_SEEN_SET, 0);
    words.forEach((w, i) => {
      Atomics.store(ctl, CTL_TABLE + 2 * i, w.offset);
      Atomics.store(ctl, CTL_TABLE + 2 * i + 1, w.width);
    });
    eventFds.forEach((fd, i) =>
      Atomics.store(ctl, CTL_TABLE + 2 * MAX_WORDS + i, fd)
    );
    Atomics.store(ctl, CTL_IO_FD, ioFd);
    // The worker may load this list long after we return (it starts
    // asynchronously, and a busy machine can keep it waiting): have it
    // compare with the words as they are now, not as they are when it gets
    // to them, or a change in between would be lost and we would sleep
    // through it.
    this.noteSeen();
    if ((eventFds.length > 0 || ioFd >= 0) && this.#control === null) {
      // The worker will block in poll(2) on these: give it an eventfd of
      // ours in the same poll so that stop, activity and a new watch list
      // reach it at once.
      this.#control = EventFd.create();
      Atomics.store(ctl, CTL_CONTROL, this.#control.fd);
    }
    Atomics.store(ctl, CTL_WORDS, words.length);
    Atomics.store(ctl, CTL_FDS, eventFds.length);
    Atomics.add(ctl, CTL_VERSION, 1);
    Atomics.add(ctl, CTL_ACTIVITY, 1);
    this.#nudge();
  }

  /**
   * Tells the worker this side just did work, so a reply is likely soon:
   * it goes back to spinning.
   */
  activity(): void {
    Atomics.add(this.#ctl, CTL_ACTIVITY, 1);
    // A worker in its short phase sees the count on its next check; waking
    // it (a futex wake, or an eventfd write that can cost this thread its
    // CPU) is only worth it when it sleeps long. The worker sets DEEP before
    // it reads ACTIVITY for the last time, so one of us sees the other.
    if (Atomics.load(this.#ctl, CTL_DEEP) === 1) this.#nudge();
  }

  /**
   * Records the watched words as they are now: call it as a turn over the
   * rings begins. When the worker next resumes watching it compares with
   * these, so that what this thread handled in that turn does not wake it
   * again (otherwise every wait after a busy spell began with a wake-up
   * for nothing).
   */
  noteSeen(): void {
    const ctl = this.#ctl;
    const r = this.region;
    for (let i = 0; i < this.#words.length; i++) {
      const w = this.#words[i]!;
      const v = w.width === 2 ? r.load16(w.offset) : r.load32(w.offset);
      Atomics.store(ctl, CTL_SEEN + i, v);
    }
    Atomics.store(ctl, CTL_SEEN_SET, 1);
  }

  /**
   * Words of the watch list (bit i: the i-th word given to
   * {@linkcode watch}) whose changes should not wake this thread for now:
   * the rx queue's available index while the device has nothing waiting for
   * buffers, say. The worker keeps tracking them, so once unmuted it reports
   * only changes made after its last look; a caller that unmutes must check
   * the ring itself for what changed while muted.
   */
  mute(mask: number): void {
    Atomics.store(this.#ctl, CTL_MUTED, mask);
  }

  /**
   * Whether the worker watches the list last given to {@linkcode watch}:
   * changes made from now on are reported. (It starts asynchronously, and a
   * cold start may take seconds while Deno compiles its module.)
   */
  get watching(): boolean {
    const ctl = this.#ctl;
    return Atomics.load(ctl, CTL_LOADED) === Atomics.load(ctl, CTL_VERSION);
  }

  /**
   * How the worker reaches this thread: `"socket"` once it has connected
   * to the wake socket, `"message"` (postMessage) until then or if it
   * could not.
   */
  get wakeChannel(): "socket" | "message" {
    return this.#wakeLine.connected ? "socket" : "message";
  }

  /** Wakes a pending (or the next) {@linkcode wait} from this thread. */
  poke(): void {
    if (this.#resolve !== null) this.#wake("poked");
    else this.#poked = true;
  }

  /**
   * Resolves when a watched word changes, an eventfd fires, {@linkcode poke}
   * is called, or after `timeoutMs`. Only one wait may be pending.
   */
  wait(timeoutMs: number): Promise<WakeReason> {
    if (this.#resolve !== null) {
      throw new Error("Cannot wait on a waker twice at once");
    }
    if (this.#poked) {
      this.#poked = false;
      return Promise.resolve("poked");
    }
    const ctl = this.#ctl;
    Atomics.store(ctl, CTL_WAITING, 1);
    if (Atomics.load(ctl, CTL_PARKED) === 1) Atomics.notify(ctl, CTL_WAITING);
    if (Atomics.exchange(ctl, CTL_PENDING, 0) === 1) {
      Atomics.store(ctl, CTL_WAITING, 0);
      return Promise.resolve("changed");
    }
    if (this.#closed !== null) return Promise.resolve("timeout");
    return new Promise((resolve) => {
      this.#resolve = resolve;
      this.#timer = setTimeout(() => this.#wake("timeout"), timeoutMs);
    });
  }

  /** Stops the worker and waits until it no longer touches the region. */
  close(): Promise<void> {
    if (this.#closed === null) {
      Atomics.store(this.#ctl, CTL_STOP, 1);
      this.#nudge();
      this.#wake("timeout");
      this.#closed = this.#stopped.promise.then(async () => {
        this.#worker.terminate();
        this.region.release();
        await this.#wakeLine.close();
        await this.#control?.close();
      });
    }
    return this.#closed;
  }

  /** Ends the worker's current sleep, whichever way it sleeps. */
  #nudge(): void {
    Atomics.notify(this.#ctl, CTL_SLEEP);
    Atomics.notify(this.#ctl, CTL_WAITING);
    this.#control?.signal();
  }

  #wake(reason: WakeReason): void {
    const resolve = this.#resolve;
    if (resolve === null) return;
    this.#resolve = null;
    clearTimeout(this.#timer);
    Atomics.store(this.#ctl, CTL_WAITING, 0);
    resolve(reason);
  }
}

/**
 * How the worker wakes the main thread: it writes a byte to a UNIX socket
 * whose other end the main thread is always reading. A socket read wakes
 * Deno's event loop like any other I/O, measured here at 15 us p50 and
 * 60 us p99 from a worker's write to the main thread running, against 35-42
 * us p50 and 260-300 us p99 for `postMessage` (docs/performance.md). The
 * socket is made with `Deno.listen` in a private directory, which is
 * removed once the worker has connected; until then, or if it cannot
 * connect, or if there is nowhere to make the socket (no writable temporary
 * directory), the worker falls back to `postMessage`.
 */
class WakeLine {
  /** Where the worker connects; undefined when no socket could be made. */
  readonly path: string | undefined;
  #listener: Deno.UnixListener | null = null;
  #conn: Deno.UnixConn | null = null;
  #closing = false;
  #done: Promise<void> = Promise.resolve();

  constructor(onWake: () => void) {
    let dir: string;
    try {
      dir = Deno.makeTempDirSync({ prefix: "ivsock-waker-" });
    } catch {
      this.path = undefined;
      return;
    }
    try {
      this.path = `${dir}/wake.sock`;
      this.#listener = Deno.listen({ transport: "unix", path: this.path });
    } catch {
      this.path = undefined;
      removeQuietly(dir);
      return;
    }
    // The worker removes the directory once it has connected, and #serve
    // once it has accepted; a process that exits before either (a cold
    // start takes seconds) removes it on its way out.
    const onUnload = () => removeQuietly(dir);
    globalThis.addEventListener("unload", onUnload);
    this.#done = this.#serve(this.#listener, dir, onWake).finally(() =>
      globalThis.removeEventListener("unload", onUnload)
    );
  }

  async #serve(
    listener: Deno.UnixListener,
    dir: string,
    onWake: () => void,
  ): Promise<void> {
    try {
      this.#conn = await listener.accept();
    } catch {
      return; // closed before the worker connected
    } finally {
      closeQuietly(listener);
      removeQuietly(dir);
    }
    if (this.#closing) {
      this.#conn.close();
      return;
    }
    // Each byte stands for one wake-up (the worker writes only when the
    // main thread waits), but a read that takes several loses nothing:
    // waking an awake waker is a no-op.
    const buf = new Uint8Array(64);
    try {
      while ((await this.#conn.read(buf)) !== null) onWake();
    } catch {
      // Closed by close(), or the worker's end went away: the worker falls
      // back to postMessage, and the main thread's timeouts bound each wait.
    }
  }

  get connected(): boolean {
    return this.#conn !== null && !this.#closing;
  }

  async close(): Promise<void> {
    this.#closing = true;
    const open = this.#conn ?? this.#listener;
    if (open !== null) closeQuietly(open);
    await this.#done;
  }
}

function closeQuietly(resource: { close(): void }): void {
  try {
    resource.close();
  } catch {
    // Closed already.
  }
}

function removeQuietly(dir: string): void {
  try {
    Deno.removeSync(dir, { recursive: true });
  } catch {
    // Gone already; nothing else uses it.
  }
}

function workerMemory(region: Region): WakerMemory {
  const b = region.backing;
  if (b.kind === "shared") return { kind: "shared", buffer: b.buffer };
  if (b.kind === "mapped") {
    return { kind: "mapped", address: b.address, size: region.size };
  }
  throw new TypeError(
    "Cannot watch a region backed by a private ArrayBuffer: use Region.alloc() or a mapped file",
  );
}
