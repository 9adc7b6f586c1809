/**
 * Whether the file at a region's path is still the file this process mapped.
 *
 * Removing a mapped `/dev/shm` file (`rm`) does not disturb the mappings that
 * exist: the memory lives until the last one is gone, so a device and a
 * guest already attached carry on. But nothing new can map it, and a file
 * created later at the same path is a different region. Comparing device
 * and inode numbers tells the cases apart.
 *
 * @module
 */

/** A file's identity: its device and inode numbers. */
export interface FileIdentity {
  dev: number;
  ino: number;
}

/**
 * What is at a region's path now: the file we mapped, nothing, or another
 * file.
 */
export type RegionFileState = "present" | "removed" | "replaced";

/**
 * The identity of the file open as descriptor `fd` in this process, through
 * Linux's `/proc/self/fd`, which still reaches the file once it is unlinked.
 *
 * @throws {Deno.errors.NotFound} if `fd` is not open.
 */
export function identityOfFd(fd: number): FileIdentity {
  const s = Deno.statSync(`/proc/self/fd/${fd}`);
  return { dev: s.dev, ino: s.ino ?? 0 };
}

/**
 * Compares the file at `path` with `mapped`.
 *
 * @throws whatever `stat` throws other than NotFound (a permission error,
 * say).
 */
export function regionFileState(
  path: string,
  mapped: FileIdentity,
): RegionFileState {
  let s: Deno.FileInfo;
  try {
    s = Deno.statSync(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return "removed";
    throw err;
  }
  return s.dev === mapped.dev && s.ino === mapped.ino ? "present" : "replaced";
}
