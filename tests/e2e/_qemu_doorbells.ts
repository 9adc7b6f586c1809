/**
 * Watching QEMU ring ivsock's doorbell from outside both processes.
 *
 * ivsock keeps no count of doorbell signals: the device's waker worker
 * reads (and so clears) its eventfds as soon as they fire
 * (`device/notify/_waker_worker.ts`), and nothing above it records that it
 * did. So a test finds QEMU's copies of the device's eventfds by the
 * kernel's `eventfd-id` (the same in every process that holds the same
 * eventfd, shown in `/proc/PID/fdinfo/FD`), and counts QEMU's 8-byte writes
 * to them with strace attached to QEMU's threads. A guest doorbell write of
 * `(peer 0 << 16) | vector` is exactly such a write, made by the vCPU thread
 * (under TCG QEMU dispatches its ioeventfds in software).
 *
 * @module
 */

/** The kernel's id of the eventfd behind `pid`'s descriptor `fd`, or `null`
 * when `fd` is not an eventfd (or has gone). */
export function eventfdId(pid: number | "self", fd: number): number | null {
  let info: string;
  try {
    info = Deno.readTextFileSync(`/proc/${pid}/fdinfo/${fd}`);
  } catch {
    return null;
  }
  const m = /^eventfd-id:\s*(\d+)$/m.exec(info);
  return m === null ? null : Number(m[1]);
}

/**
 * `pid`'s descriptors that are the eventfds with the kernel ids `ids`, as a
 * map from descriptor to id.
 */
export function descriptorsOf(
  pid: number,
  ids: ReadonlySet<number>,
): Map<number, number> {
  const found = new Map<number, number>();
  for (const entry of Deno.readDirSync(`/proc/${pid}/fd`)) {
    const fd = Number(entry.name);
    let target: string;
    try {
      target = Deno.readLinkSync(`/proc/${pid}/fd/${fd}`);
    } catch {
      continue; // Closed meanwhile.
    }
    if (target !== "anon_inode:[eventfd]") continue;
    const id = eventfdId(pid, fd);
    if (id !== null && ids.has(id)) found.set(fd, id);
  }
  return found;
}

/** strace could not attach (not installed right, or no ptrace permission). */
export class AttachError extends Error {
  override name = "AttachError";
}

/** How long strace gets to attach to every thread of QEMU. */
const ATTACH_TIMEOUT_MS = 10_000;

/**
 * Runs `during` with strace attached to every thread of `pid`, and returns
 * how many successful 8-byte `write`s `pid` made to each of `fds` meanwhile.
 * strace is detached (SIGINT) and reaped before this returns or throws, so
 * QEMU carries on untraced.
 *
 * @throws {AttachError} if strace cannot attach (no ptrace permission, say),
 * with its stderr; `during` has not run then. Rethrows what `during` throws.
 */
export async function countWrites(
  strace: string,
  pid: number,
  fds: readonly number[],
  during: () => Promise<void>,
): Promise<Map<number, number>> {
  const dir = await Deno.makeTempDir({ prefix: "ivsock-e2e-strace-" });
  const out = `${dir}/trace`;
  const child = new Deno.Command(strace, {
    args: [
      "-f",
      "-e",
      "trace=write",
      "-e",
      "signal=none",
      "--status=successful",
      "-s",
      "0",
      "-o",
      out,
      "-p",
      String(pid),
    ],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  let stderr = "";
  let attached!: () => void;
  const attachedNow = new Promise<void>((r) => (attached = r));
  const pump = (async () => {
    const decoder = new TextDecoder();
    for await (const chunk of child.stderr) {
      stderr += decoder.decode(chunk, { stream: true });
      if (/Process \d+ attached/.test(stderr)) attached();
    }
  })();
  let exited = false;
  const status = child.status.finally(() => (exited = true));
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    const ok = await Promise.race([
      attachedNow.then(() => true),
      status.then(() => false),
      new Promise<boolean>((
        r,
      ) => (timer = setTimeout(() => r(false), ATTACH_TIMEOUT_MS))),
    ]);
    clearTimeout(timer);
    if (!ok) {
      throw new AttachError(
        `Expected strace to attach to QEMU (pid ${pid}) within ${ATTACH_TIMEOUT_MS} ms, it did not:\n${stderr}`,
      );
    }
    await during();
  } finally {
    clearTimeout(timer);
    // SIGINT detaches from every thread and leaves QEMU running; SIGKILL
    // could leave QEMU's threads stopped.
    if (!exited) child.kill("SIGINT");
    await status;
    await pump;
  }
  const counts = new Map<number, number>(fds.map((fd) => [fd, 0]));
  try {
    const text = await Deno.readTextFile(out);
    // "<tid> write(<fd>, ""..., 8)   = 8" (strace pads before the "=")
    for (const m of text.matchAll(/^\d+\s+write\((\d+), .*, 8\)\s+=\s+8$/gm)) {
      const fd = Number(m[1]);
      const n = counts.get(fd);
      if (n !== undefined) counts.set(fd, n + 1);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  return counts;
}
