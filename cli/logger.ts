/**
 * Log lines for the CLI: one line per event, human-readable by default,
 * JSON lines with `--log-format json`.
 *
 * ```text
 * 2026-11-23T19:00:00.000Z INFO  route web: refused 127.0.0.1:5000: connection limit of 2 reached
 * {"time":"2026-11-23T19:00:00.000Z","level":"info","msg":"...","route":"web"}
 * ```
 *
 * @module
 */

import type { LogFn, LogLevel } from "../device/log.ts";

const RANK: Record<LogLevel, number> = {
  debug: 10,
  info: 20,
  warn: 30,
  error: 40,
};

/** Options of {@linkcode makeLogger}. */
export interface LoggerOptions {
  format: "text" | "json";
  level: LogLevel;
  /** Where lines go. @default {stderr} */
  write?: (line: string) => void;
  /** Added to every line (e.g. `{ role: "guest" }`). */
  base?: Record<string, unknown>;
}

/** A {@linkcode LogFn} that prints lines at or above `level`. */
export function makeLogger(options: LoggerOptions): LogFn {
  const min = RANK[options.level];
  const encoder = new TextEncoder();
  const write = options.write ??
    ((line: string) => Deno.stderr.writeSync(encoder.encode(line + "\n")));
  const base = options.base ?? {};
  return (level, message, fields) => {
    if (RANK[level] < min) return;
    const time = new Date().toISOString();
    if (options.format === "json") {
      write(JSON.stringify({ time, level, msg: message, ...base, ...fields }));
      return;
    }
    const extra = { ...base, ...fields };
    const tail = Object.entries(extra).map(([k, v]) =>
      `${k}=${typeof v === "string" ? v : JSON.stringify(v)}`
    )
      .join(" ");
    write(
      `${time} ${level.toUpperCase().padEnd(5)} ${message}${
        tail ? " " + tail : ""
      }`,
    );
  };
}
