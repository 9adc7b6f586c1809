/**
 * What the waker's main-thread side and its worker share: the layout of the
 * control buffer and the back-off schedule.
 *
 * The control buffer is an Int32Array over a SharedArrayBuffer. Everything
 * the main thread tells the worker after start-up goes through it (the
 * worker never yields to its own event loop, so it cannot read messages):
 *
 * ```text
 * [0] STOP       main sets 1: the worker exits its loop
 * [1] WAITING    main sets 1 while it awaits a wake; the worker swaps it to 0
 *                and posts a message
 * [2] PENDING    the worker sets 1 when something changed and main was not
 *                waiting; main swaps it to 0 before waiting
 * [3] ACTIVITY   main increments it after doing work: restarts the spin phase
 * [4] SLEEP      the futex word the worker sleeps on; main notifies it to cut
 *                a sleep short (stop, new watch list, activity)
 * [5] VERSION    main increments it after rewriting the watch list
 * [6] WORDS      number of watched words (at most MAX_WORDS)
 * [7] FDS        number of watched eventfds (at most MAX_FDS)
 * [8] CONTROL    an eventfd of the main thread's (or -1) that ends a poll(2)
 *                at once: written on stop, activity and a new watch list
 * [9] DEEP       the worker sets 1 while in a long sleep (the idle interval,
 *                or blocked on doorbells): only then does activity() need to
 *                wake it, so a busy main thread does not wake it every turn
 * [10] PARKED    the worker sets 1 while it sleeps on WAITING because the
 *                main thread is busy (and looks at the rings itself): wait()
 *                then notifies WAITING
 * [11] MUTED     a bit per watched word (bit i: word i) whose changes do not
 *                wake the main thread; the worker still tracks their values
 * [12] SEEN_SET  main sets 1 after writing SEEN (each turn, and watch()); the
 *                worker, leaving PARKED or loading a watch list, takes SEEN
 *                as its snapshot and clears it
 * [13] LOADED    the VERSION of the watch list the worker last loaded (and
 *                took its snapshot of): equal to VERSION once it watches it
 * [14] IO_FD     a descriptor (the loop's epoll set) or -1: readable means
 *                the main thread has sockets to serve; the worker wakes it
 *                but leaves the descriptor alone (the main thread's
 *                dispatch is what clears it)
 * [15..]         MAX_WORDS pairs (byte offset, width), then MAX_FDS fds,
 *                then SEEN: MAX_WORDS values of the watched words as the
 *                main thread saw them when it last started a turn
 * ```
 *
 * @module
 */

export const CTL_STOP = 0;
export const CTL_WAITING = 1;
export const CTL_PENDING = 2;
export const CTL_ACTIVITY = 3;
export const CTL_SLEEP = 4;
export const CTL_VERSION = 5;
export const CTL_WORDS = 6;
export const CTL_FDS = 7;
export const CTL_CONTROL = 8;
export const CTL_DEEP = 9;
export const CTL_PARKED = 10;
export const CTL_MUTED = 11;
export const CTL_SEEN_SET = 12;
export const CTL_LOADED = 13;
export const CTL_IO_FD = 14;
export const CTL_TABLE = 15;
export const MAX_WORDS = 16;
export const MAX_FDS = 8;
export const CTL_SEEN = CTL_TABLE + 2 * MAX_WORDS + MAX_FDS;
export const CTL_LENGTH = CTL_SEEN + MAX_WORDS;

/** Where the worker finds the region's memory. */
export type WakerMemory =
  | { kind: "shared"; buffer: SharedArrayBuffer }
  | { kind: "mapped"; address: bigint; size: number };

/** How fast the worker polls and how far it backs off. */
export interface BackoffOptions {
  /** After a change, poll without sleeping for this long (ms). */
  spinMs: number;
  /** Then sleep this long between polls (ms) ... */
  shortSleepMs: number;
  /** ... until this long has passed since the last change (ms) ... */
  shortPhaseMs: number;
  /** ... and from then on sleep this long (ms): the idle poll interval. */
  idleSleepMs: number;
}

/** The worker's start-up message. */
export interface WakerInit {
  memory: WakerMemory;
  control: SharedArrayBuffer;
  options: BackoffOptions;
  /** A UNIX socket the main thread reads: a byte written there wakes it. */
  wakeSocket?: string;
}

/**
 * How long to sleep when nothing has changed for `idleMs`: 0 while spinning,
 * then a short sleep, then the idle interval. A step function, not a
 * geometric ramp, so that the idle cost is easy to state: one wake-up per
 * `idleSleepMs`.
 */
export function sleepFor(idleMs: number, o: BackoffOptions): number {
  if (idleMs < o.spinMs) return 0;
  if (idleMs < o.shortPhaseMs) return o.shortSleepMs;
  return o.idleSleepMs;
}
