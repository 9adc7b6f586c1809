/**
 * How a ring loop spends the time between its turns: right after work it
 * keeps looking (a reply is likely within microseconds), handing the CPU to
 * anything else runnable between looks, and only then sleeps on its waker.
 *
 * The spin runs on the loop's own thread, which also serves the sockets
 * (an `IoPoller`), so a packet or a socket event found while spinning is
 * handled at once, with no other thread to wake. Spinning in the waker's
 * worker instead still cost a wake-up of this thread per packet, 15-20 us
 * each on these virtual machines, where waking a thread on an idle vCPU
 * costs 30-80 us (docs/performance.md).
 *
 * Between looks the loop lets promise continuations run (the bridges and
 * sockets it serves), and every {@linkcode EVENT_LOOP_EVERY_MS} it yields
 * to Deno's event loop, so that timers, the admin API and WebSocket
 * traffic keep going while it spins.
 *
 * @module
 */

import { setImmediate } from "node:timers";
import { libc } from "../shm/_libc.ts";

/**
 * How long the loop keeps looking after its last work. Long enough to
 * cover a reply through a local service (a TCP round trip there and back
 * is 30-100 us here), short enough that a lone request costs little CPU.
 */
export const SPIN_MS = 2;

/**
 * Longest the loop goes without yielding to Deno's event loop while it
 * spins or works, so timers, the admin API and WebSocket traffic wait at
 * most this long. A yield alone costs 1-2 us (Deno 2.9); yielding on every
 * look made a round trip 10-30% slower than every 0.1 ms (prototype), every
 * 0.5 ms measured 2-3% better again than every 0.1 ms, and every 2 ms the
 * same as 0.5 ms for connections one at a time (interleaved runs,
 * docs/performance.md).
 */
export const EVENT_LOOP_EVERY_MS = 0.5;

/** Paces one ring loop. */
export class LoopPacer {
  readonly spinMs: number;
  #lastWork = -Infinity;
  #lastYield = 0;
  #busy = false;

  constructor(spinMs = SPIN_MS) {
    this.spinMs = spinMs;
  }

  /**
   * After a turn that did work: what to await before the next turn. It
   * lets the promise chains the work started finish first.
   */
  worked(now: number): Promise<void> {
    this.#lastWork = now;
    if (now - this.#lastYield < EVENT_LOOP_EVERY_MS) return settle();
    this.#lastYield = now;
    return yieldToEventLoop();
  }

  /**
   * After a turn with nothing to do: what to await before looking again,
   * or null once the spin is over and the loop should sleep.
   */
  spin(now: number): Promise<void> | null {
    if (now - this.#lastWork >= this.spinMs) return null;
    libc().sched_yield();
    if (now - this.#lastYield < EVENT_LOOP_EVERY_MS) return Promise.resolve();
    this.#lastYield = now;
    return yieldToEventLoop();
  }

  /**
   * Runs `work` (a turn over the rings, or a kick's transmit) unless one is
   * running already, as when a write inside a turn kicks; returns how much
   * it did, or null when it did not run. Work done here (outside the loop's
   * own turns) counts for the spin too.
   */
  exclusive(work: () => number): number | null {
    if (this.#busy) return null;
    this.#busy = true;
    let done: number;
    try {
      done = work();
    } finally {
      this.#busy = false;
    }
    if (done > 0) this.#lastWork = performance.now();
    return done;
  }

  /** The loop slept on its waker (and so let the event loop run). */
  slept(now: number): void {
    this.#lastYield = now;
  }
}

/**
 * Promise continuations a turn starts (a socket read resolving, the bridge
 * passing the bytes on, the vsock write queueing them) each take a
 * microtask tick, and the loop's own `await` is one tick too: awaiting a
 * single tick let the loop run a whole turn, system calls included,
 * between each step of such a chain (8-9 us from a socket read to the
 * vsock write, in a timeline of the round trip). Waiting this many ticks
 * lets chains that deep finish first.
 */
const SETTLE_TICKS = 16;

export async function settle(): Promise<void> {
  for (let i = 0; i < SETTLE_TICKS; i++) await undefined;
}

/** Yields to the event loop cheaply (1-2 us; `setTimeout(0)` costs ~2 ms). */
export function yieldToEventLoop(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}
