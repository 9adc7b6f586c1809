/**
 * The logging hook of the device layer. The device model knows nothing of
 * where logs go; the CLI passes a function that prints them.
 *
 * @module
 */

/** Severity of a log line. */
export type LogLevel = "debug" | "info" | "warn" | "error";

/** Receives one event: a message and optional structured fields. */
export type LogFn = (
  level: LogLevel,
  message: string,
  fields?: Record<string, unknown>,
) => void;

/** Discards everything. */
export const silentLog: LogFn = () => {};

/**
 * Wraps `log` so that a flood of lines with the same `key` (a hostile guest
 * sending malformed chains in a loop, say) prints at most `burst` lines per
 * `windowMs`, then one line saying how many were suppressed.
 */
export function rateLimited(
  log: LogFn,
  burst = 10,
  windowMs = 1000,
  now: () => number = () => performance.now(),
): (
  key: string,
  level: LogLevel,
  message: string,
  fields?: Record<string, unknown>,
) => void {
  const windows = new Map<
    string,
    { start: number; count: number; suppressed: number }
  >();
  return (key, level, message, fields) => {
    const t = now();
    let w = windows.get(key);
    if (w === undefined || t - w.start >= windowMs) {
      if (w !== undefined && w.suppressed > 0) {
        log(
          level,
          `${w.suppressed} more like "${key}" suppressed in the last ${windowMs} ms`,
        );
      }
      w = { start: t, count: 0, suppressed: 0 };
      windows.set(key, w);
      // Bound the map: keys are a small fixed set in practice, but be safe.
      if (windows.size > 256) windows.delete(windows.keys().next().value!);
    }
    if (w.count < burst) {
      w.count++;
      log(level, message, fields);
    } else {
      w.suppressed++;
    }
  };
}
