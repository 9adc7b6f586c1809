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
  CTL_LENGTH,
  CTL_PENDING,
  CTL_SLEEP,
  CTL_STOP,
  CTL_TABLE,
  CTL_VERSION,
  CTL_WAITING,
  CTL_WORDS,
  MAX_FDS,
  MAX_WORDS,
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
 * Default back-off: no pure spinning (on a 2-core machine two spinning
 * watchers, one per process, starve the very threads they should wake: we
 * measured waits of 5 ms and more that way); after activity the worker polls
 * every 0.1 ms for 50 ms, sleeping on a futex in between (with its timer
 * slack cut to 1 us so that such sleeps are accurate), then every 10 ms.
 * The idle cost is one wake-up per 10 ms. 0.1 ms measured best for a 64-byte
 * round trip through both processes: 0.02 ms doubled it (each worker then
 * took a third of a core from the main threads), 0.5 ms doubled it too.
 * With doorbells the worker blocks on them instead (see _waker_worker.ts).
 */
export const DEFAULT_BACKOFF: BackoffOptions = {
  spinMs: 0,
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
    this.#worker = new Worker(new URL("./_waker_worker.ts", import.meta.url), {
      type: "module",
    });
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
    this.#worker.postMessage({
      memory,
      control,
      options: { ...DEFAULT_BACKOFF, ...backoff },
    });
  }

  /**
   * Replaces what the worker watches. Offsets must be aligned to their
   * width and inside the region.
   *
   * @throws {RangeError} on too many entries or a bad offset.
   */
  watch(words: readonly WatchedWord[], eventFds: readonly number[] = []): void {
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
    words.forEach((w, i) => {
      Atomics.store(ctl, CTL_TABLE + 2 * i, w.offset);
      Atomics.store(ctl, CTL_TABLE + 2 * i + 1, w.width);
    });
    eventFds.forEach((fd, i) =>
      Atomics.store(ctl, CTL_TABLE + 2 * MAX_WORDS + i, fd)
    );
    if (eventFds.length > 0 && this.#control === null) {
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
        await this.#control?.close();
      });
    }
    return this.#closed;
  }

  /** Ends the worker's current sleep, whichever way it sleeps. */
  #nudge(): void {
    Atomics.notify(this.#ctl, CTL_SLEEP);
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
