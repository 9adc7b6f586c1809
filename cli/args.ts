/**
 * Argument parsing shared by the subcommands: `node:util` parseArgs (the
 * @std/cli stand-in) with errors that say which option and what was wrong.
 *
 * @module
 */

import { parseArgs } from "../deps.ts";

/** A command line that cannot be used. Exit code 2. */
export class UsageError extends Error {
  override name = "UsageError";
}

/** Option definitions, as parseArgs takes them. */
export type OptionSpec = Record<
  string,
  { type: "string" | "boolean"; multiple?: boolean; short?: string }
>;

/** Parses `args` strictly; unknown options and stray arguments are errors. */
export function parse<T extends OptionSpec>(
  command: string,
  args: string[],
  options: T,
): Record<string, string | boolean | string[] | boolean[] | undefined> {
  try {
    const { values } = parseArgs({
      args,
      options,
      strict: true,
      allowPositionals: false,
    });
    return values as Record<
      string,
      string | boolean | string[] | boolean[] | undefined
    >;
  } catch (err) {
    const text = err instanceof Error ? err.message : String(err);
    throw new UsageError(
      `ivsock ${command}: ${
        text.replace(/\. To specify.*$/s, "")
      } (see: ivsock ${command} --help)`,
    );
  }
}

/** An integer option in `[min, max]`. @throws {UsageError} */
export function intOption(
  command: string,
  name: string,
  value: unknown,
  min: number,
  max: number,
  fallback: number,
): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (
    typeof value !== "string" || value.trim() === "" || !Number.isInteger(n) ||
    n < min || n > max
  ) {
    throw new UsageError(
      `ivsock ${command}: --${name}: expected an integer from ${min} to ${max}, received ${
        JSON.stringify(value)
      }`,
    );
  }
  return n;
}

/** The `--log-format` and `--log-level` options. */
export const LOG_OPTIONS = {
  "log-format": { type: "string" },
  "log-level": { type: "string" },
} as const satisfies OptionSpec;

/** Validated log settings. @throws {UsageError} */
export function logSettings(
  command: string,
  values: Record<string, unknown>,
  fallback: {
    format: "text" | "json";
    level: "debug" | "info" | "warn" | "error";
  } = { format: "text", level: "info" },
): { format: "text" | "json"; level: "debug" | "info" | "warn" | "error" } {
  const format = values["log-format"] ?? fallback.format;
  const level = values["log-level"] ?? fallback.level;
  if (format !== "text" && format !== "json") {
    throw new UsageError(
      `ivsock ${command}: --log-format: expected "text" or "json", received ${
        JSON.stringify(format)
      }`,
    );
  }
  if (
    level !== "debug" && level !== "info" && level !== "warn" &&
    level !== "error"
  ) {
    throw new UsageError(
      `ivsock ${command}: --log-level: expected "debug", "info", "warn" or "error", received ${
        JSON.stringify(level)
      }`,
    );
  }
  return { format, level };
}

/**
 * Resolves on the first SIGINT or SIGTERM. Later signals (a terminal sends
 * Ctrl-C to the whole process group, and wrappers such as timeout(1) pass
 * it on again) are answered with a note instead of cutting the shutdown
 * short; SIGKILL remains for forcing it. The process exits through
 * `Deno.exit`, so the handlers do not keep it alive.
 */
export function untilSignal(
  onRepeat: (s: Deno.Signal) => void = () => {},
): Promise<Deno.Signal> {
  return new Promise((resolve) => {
    let first: Deno.Signal | null = null;
    for (const s of ["SIGINT", "SIGTERM"] as const) {
      Deno.addSignalListener(s, () => {
        if (first === null) {
          first = s;
          resolve(s);
        } else onRepeat(s);
      });
    }
  });
}
