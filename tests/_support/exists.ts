/**
 * Whether a path exists (following symlinks), for tests and tools that
 * check a file, a socket or a `/dev/shm` region appeared or went away.
 *
 * @module
 */

/** Whether `path` exists. */
export function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}
