/**
 * Reading a config file: JSON, validated with the schema; every problem is
 * reported as `path: message`, and nothing is started on a bad config.
 *
 * @module
 */

import { Config, type ConfigSpec, formatIssues } from "./schema.ts";

/** A config that cannot be used; `problems` has one line per issue. */
export class ConfigError extends Error {
  override name = "ConfigError";
  readonly problems: string[];
  constructor(source: string, problems: string[]) {
    super(
      `${source}: ${
        problems.length === 1
          ? problems[0]
          : `${problems.length} problems:\n  ${problems.join("\n  ")}`
      }`,
    );
    this.problems = problems;
  }
}

/** Validates an already-parsed value. @throws {ConfigError} */
export function parseConfig(value: unknown, source = "config"): ConfigSpec {
  const result = Config.safeParse(value, { reportInput: true });
  if (!result.success) {
    throw new ConfigError(source, formatIssues(result.error));
  }
  return result.data;
}

/** Reads and validates a JSON config file. @throws {ConfigError} */
export async function loadConfig(path: string): Promise<ConfigSpec> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (err) {
    const why = err instanceof Deno.errors.NotFound
      ? "no such file"
      : err instanceof Deno.errors.IsADirectory
      ? "it is a directory"
      : err instanceof Deno.errors.PermissionDenied
      ? "permission denied"
      : err instanceof Error
      ? err.message
      : String(err);
    throw new ConfigError(path, [`cannot read the config file: ${why}`]);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new ConfigError(path, [
      `not valid JSON: ${err instanceof Error ? err.message : err}`,
    ]);
  }
  return parseConfig(value, path);
}
