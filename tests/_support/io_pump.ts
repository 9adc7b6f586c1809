/**
 * `pumpIo(io)`: calls {@linkcode IoPoller.dispatch} from a timer while a
 * test runs, standing in for the ring loop that does it in the sidecar.
 * Without it no FdConn read or write that waits for readiness ever settles.
 *
 * Stop it before the test ends (`using pump = pumpIo(io)`): the sanitizer
 * reports a live interval as a leak.
 *
 * @module
 */

import type { IoPoller } from "../../device/notify/io_poller.ts";

/**
 * Requested period. Deno clamps repeating timers to about 4 ms after a few
 * runs, so this is a floor rather than the rate.
 */
const PUMP_MS = 1;

/** A running pump. */
export interface IoPump extends Disposable {
  /** Stops dispatching; idempotent. */
  stop(): void;
}

/** Dispatches `io` every `everyMs` until stopped. */
export function pumpIo(io: IoPoller, everyMs = PUMP_MS): IoPump {
  const timer = setInterval(() => io.dispatch(), everyMs);
  let stopped = false;
  const stop = () => {
    if (stopped) return;
    stopped = true;
    clearInterval(timer);
  };
  return { stop, [Symbol.dispose]: stop };
}
