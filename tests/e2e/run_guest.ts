/**
 * Boots the e2e guest image (see `build_guest.sh`) in QEMU, runs one shell
 * command inside it and reports the command's exit status and the serial
 * console.
 *
 * The guest's `/init` prints {@linkcode READY_MARKER} once the basics are
 * mounted, runs the command given (base64) as `ivsock.cmd=` on the kernel
 * command line, prints `IVSOCK-GUEST-EXIT <status>` and powers off, so QEMU
 * exits by itself. The command runs as root in `/ivsock`, the copy of the
 * repo's sources, with `deno` on `PATH`.
 *
 * @module
 */

/** Printed by the guest's `/init` just before it runs the command. */
export const READY_MARKER = "IVSOCK-GUEST-READY";
/** Printed by the guest's `/init`, followed by the command's exit status. */
export const EXIT_MARKER = "IVSOCK-GUEST-EXIT";

/** The QEMU binary, looked up on `PATH`. */
export const QEMU = "qemu-system-x86_64";

/** The kernel rejects command lines longer than this (x86's
 * `COMMAND_LINE_SIZE` is 2048 including the final NUL). */
const MAX_KERNEL_CMDLINE = 2047;

/** How long QEMU gets to exit after SIGTERM before it is killed. */
const KILL_GRACE_MS = 3000;

/** What {@linkcode runGuest} boots and runs. */
export interface GuestOptions {
  /** The kernel image (`KERNEL=` from `build_guest.sh`). */
  kernel: string;
  /** The initramfs (`INITRD=` from `build_guest.sh`). */
  initrd: string;
  /**
   * A file to share with the guest as an `ivshmem-plain` device (no
   * interrupts), usually under `/dev/shm`. Excludes `doorbellSocket`.
   */
  shmPath?: string;
  /**
   * Size of the `shmPath` region in bytes: a power of two. Defaults to the
   * file's size.
   */
  shmSize?: number;
  /**
   * The UNIX socket of an ivshmem server, for an `ivshmem-doorbell` device
   * (MSI-X doorbells; the server hands QEMU the memory). The server must be
   * listening before the call: QEMU reads its setup messages at start-up.
   * Excludes `shmPath`.
   */
  doorbellSocket?: string;
  /** MSI-X vectors of the doorbell device. @default {1} */
  vectors?: number;
  /** The shell command the guest runs (by busybox `sh`, in `/ivsock`). */
  command: string;
  /** Kill QEMU after this long, whatever the guest is doing. */
  timeoutMs: number;
  /** Guest memory. @default {1024} */
  memoryMiB?: number;
  /** Called with each piece of console output as it arrives. */
  onConsole?: (text: string) => void;
  /** Called once with QEMU's process id, right after it starts. */
  onSpawn?: (pid: number) => void;
  /**
   * Stops QEMU (SIGTERM, then SIGKILL) when aborted: how a test that has
   * failed ends a guest that would otherwise run until `timeoutMs`.
   */
  signal?: AbortSignal;
}

/** How a {@linkcode runGuest} run ended. */
export interface GuestResult {
  /**
   * The command's exit status from the `IVSOCK-GUEST-EXIT` line, or `null`
   * if the guest never printed one (timeout, kernel panic, QEMU killed).
   */
  status: number | null;
  /** Everything the guest printed on its serial console. */
  console: string;
  /** Whether QEMU was killed because `timeoutMs` ran out. */
  timedOut: boolean;
  /** Whether QEMU was stopped because `signal` was aborted. */
  aborted: boolean;
  /** What QEMU itself printed on stderr (warnings, errors). */
  qemuStderr: string;
  /** Milliseconds from starting QEMU to its exit. */
  elapsedMs: number;
  /** Milliseconds from starting QEMU to the READY marker, or `null`. */
  readyMs: number | null;
}

/** A built guest image. */
export interface GuestImage {
  kernel: string;
  initrd: string;
  /** `build_guest.sh`'s progress output (stderr). */
  log: string;
}

/** The path of `name` on `PATH`, or `undefined`. */
export function findOnPath(name: string): string | undefined {
  for (const dir of (Deno.env.get("PATH") ?? "").split(":")) {
    if (dir === "") continue;
    const candidate = `${dir}/${name}`;
    try {
      if (Deno.statSync(candidate).isFile) return candidate;
    } catch {
      // Not in this directory; try the next.
    }
  }
  return undefined;
}

/** The QEMU binary's path, or `undefined` when it is not installed. */
export function findQemu(): string | undefined {
  return findOnPath(QEMU);
}

/**
 * Builds the guest image, or finds it in `tests/e2e/.cache/`, by running
 * `build_guest.sh`.
 *
 * @param options.guestSrc the guest program directory to ship as
 * `/ivsock/guest` (the script defaults to the repo's `guest/`).
 * @throws {Error} with the script's output if it fails or prints no paths.
 */
export async function buildGuest(
  options: { guestSrc?: string } = {},
): Promise<GuestImage> {
  const script = decodeURIComponent(
    new URL("./build_guest.sh", import.meta.url).pathname,
  );
  const args = [script];
  if (options.guestSrc !== undefined) args.push(options.guestSrc);
  const out = await new Deno.Command("bash", {
    args,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stdout = new TextDecoder().decode(out.stdout);
  const log = new TextDecoder().decode(out.stderr);
  if (!out.success) {
    throw new Error(
      `Expected build_guest.sh to succeed, it exited with code ${out.code}:\n${log}${stdout}`,
    );
  }
  const kernel = /^KERNEL=(.+)$/m.exec(stdout)?.[1];
  const initrd = /^INITRD=(.+)$/m.exec(stdout)?.[1];
  if (kernel === undefined || initrd === undefined) {
    throw new Error(
      `Expected build_guest.sh to print KERNEL= and INITRD= lines, got:\n${stdout}`,
    );
  }
  return { kernel, initrd, log };
}

/**
 * The QEMU arguments for `options`, after checking them.
 *
 * The machine is q35 with one CPU and no network card, under TCG (software
 * emulation), or KVM when `IVSOCK_E2E_KVM=1` and `/dev/kvm` exists. `-cpu max` gives
 * the guest RDRAND, so its random pool is ready at once; with QEMU's default
 * CPU model, the guest's first `deno run` blocks about a second in
 * `getrandom()` waiting for the kernel to gather entropy.
 *
 * @throws {TypeError} for a missing file or conflicting options.
 * @throws {RangeError} for a size, count or command line out of range.
 */
export function qemuArgs(options: GuestOptions): string[] {
  for (
    const [what, path] of [["kernel", options.kernel], [
      "initrd",
      options.initrd,
    ]] as const
  ) {
    if (!isFile(path)) {
      throw new TypeError(
        `Expected the guest ${what} at ${path}, found no file; run tests/e2e/build_guest.sh`,
      );
    }
  }
  if (options.shmPath !== undefined && options.doorbellSocket !== undefined) {
    throw new TypeError(
      "Expected at most one of shmPath (ivshmem-plain) and doorbellSocket (ivshmem-doorbell), got both",
    );
  }
  if (options.shmSize !== undefined && options.shmPath === undefined) {
    throw new TypeError("Expected shmPath with shmSize, got shmSize alone");
  }
  if (options.vectors !== undefined && options.doorbellSocket === undefined) {
    throw new TypeError(
      "Expected doorbellSocket with vectors, got vectors alone",
    );
  }
  if (!(Number.isFinite(options.timeoutMs) && options.timeoutMs > 0)) {
    throw new RangeError(
      `Expected timeoutMs to be a positive number, got ${options.timeoutMs}`,
    );
  }
  const memoryMiB = options.memoryMiB ?? 1024;
  if (!Number.isInteger(memoryMiB) || memoryMiB < 128) {
    throw new RangeError(
      `Expected memoryMiB to be an integer of at least 128, got ${memoryMiB}`,
    );
  }

  const append = `console=ttyS0 quiet panic=-1 ivsock.cmd=${
    base64(options.command)
  }`;
  if (append.length > MAX_KERNEL_CMDLINE) {
    throw new RangeError(
      `Expected the kernel command line to fit in ${MAX_KERNEL_CMDLINE} characters, got ${append.length} (the command is base64-encoded; shorten it or put a script in the image)`,
    );
  }

  const args = [
    "-machine",
    "q35",
    ...accelArgs(),
    "-cpu",
    "max",
    "-m",
    String(memoryMiB),
    "-smp",
    "1",
    "-nographic",
    "-no-reboot",
    // No network card: the guest must not reach anything but the host's
    // ivshmem region.
    "-nic",
    "none",
    "-kernel",
    options.kernel,
    "-initrd",
    options.initrd,
    "-append",
    append,
  ];

  if (options.shmPath !== undefined) {
    const size = options.shmSize ?? fileSize(options.shmPath);
    // QEMU asserts (and aborts) on a BAR that is not a power of two.
    if (
      !Number.isSafeInteger(size) || size < 4096 || (size & (size - 1)) !== 0
    ) {
      throw new RangeError(
        `Expected the ivshmem size for ${options.shmPath} to be a power of two of at least 4096 bytes, got ${size}`,
      );
    }
    args.push(
      "-object",
      `memory-backend-file,id=hm,share=on,mem-path=${
        qemuOptValue(options.shmPath)
      },size=${size}`,
      "-device",
      "ivshmem-plain,memdev=hm",
    );
  } else if (options.doorbellSocket !== undefined) {
    const vectors = options.vectors ?? 1;
    if (!Number.isInteger(vectors) || vectors < 1 || vectors > 1024) {
      throw new RangeError(
        `Expected vectors to be an integer from 1 to 1024, got ${vectors}`,
      );
    }
    args.push(
      "-chardev",
      `socket,path=${qemuOptValue(options.doorbellSocket)},id=iv`,
      "-device",
      `ivshmem-doorbell,chardev=iv,vectors=${vectors}`,
    );
  }
  return args;
}

/**
 * Boots the guest, runs `options.command` in it and waits for QEMU to exit.
 *
 * QEMU is always reaped before this returns or throws, and both of its
 * output streams are read to the end, so the call leaves no process, stream
 * or timer behind (Deno's test sanitizers stay quiet).
 *
 * @throws {TypeError | RangeError} from {@linkcode qemuArgs} for bad options.
 * @throws {Error} if QEMU is not installed, or exits with an error before
 * the guest printed {@linkcode READY_MARKER} (bad arguments, an ivshmem
 * server that is not listening); the message carries QEMU's stderr.
 * Rethrows whatever `onConsole` or `onSpawn` throws, after stopping QEMU.
 */
export async function runGuest(options: GuestOptions): Promise<GuestResult> {
  const args = qemuArgs(options);
  const started = performance.now();
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command(QEMU, {
      args,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) {
      throw new Error(
        `Expected ${QEMU} on PATH, found none; install it with: apt-get install qemu-system-x86`,
        { cause: err },
      );
    }
    throw err;
  }

  let consoleText = "";
  let readyMs: number | null = null;
  let timedOut = false;
  let aborted = false;
  let callbackError: { error: unknown } | undefined;
  let killTimer: ReturnType<typeof setTimeout> | undefined;

  // SIGTERM first: QEMU then exits cleanly; SIGKILL if it does not.
  const stop = () => {
    if (killTimer !== undefined) return;
    signal(child, "SIGTERM");
    killTimer = setTimeout(() => signal(child, "SIGKILL"), KILL_GRACE_MS);
  };
  const timeoutTimer = setTimeout(() => {
    timedOut = true;
    stop();
  }, options.timeoutMs);

  const onAbort = () => {
    aborted = true;
    stop();
  };
  if (options.signal?.aborted) onAbort();
  else options.signal?.addEventListener("abort", onAbort, { once: true });
  if (options.onSpawn !== undefined) {
    try {
      options.onSpawn(child.pid);
    } catch (error) {
      callbackError = { error };
      stop();
    }
  }

  const pumpStdout = async () => {
    const decoder = new TextDecoder();
    // Keep reading after a failed callback, so that QEMU never blocks on a
    // full pipe while it is being stopped.
    for await (const chunk of child.stdout) {
      const text = decoder.decode(chunk, { stream: true });
      consoleText += text;
      if (readyMs === null && consoleText.includes(READY_MARKER)) {
        readyMs = performance.now() - started;
      }
      if (options.onConsole !== undefined && callbackError === undefined) {
        try {
          options.onConsole(text);
        } catch (error) {
          callbackError = { error };
          stop();
        }
      }
    }
    consoleText += decoder.decode();
  };

  const [stdoutDone, stderrDone, statusDone] = await Promise.allSettled([
    pumpStdout(),
    new Response(child.stderr).text(),
    child.status,
  ]);
  clearTimeout(timeoutTimer);
  clearTimeout(killTimer);
  options.signal?.removeEventListener("abort", onAbort);
  const elapsedMs = performance.now() - started;

  if (statusDone.status === "rejected") throw statusDone.reason;
  if (stdoutDone.status === "rejected") throw stdoutDone.reason;
  const qemuStderr = stderrDone.status === "fulfilled" ? stderrDone.value : "";
  if (callbackError !== undefined) throw callbackError.error;

  const exit = statusDone.value;
  if (!exit.success && readyMs === null && !timedOut && !aborted) {
    throw new Error(
      `Expected QEMU to boot the guest, it exited with code ${exit.code}${
        exit.signal === null ? "" : ` (${exit.signal})`
      } before ${READY_MARKER}:\n${qemuStderr.trim()}\nconsole:\n${consoleText}`,
    );
  }
  return {
    status: parseExitStatus(consoleText),
    console: consoleText,
    timedOut,
    aborted,
    qemuStderr,
    elapsedMs,
    readyMs,
  };
}

/**
 * The status from the last `IVSOCK-GUEST-EXIT <n>` line of a console
 * transcript, or `null`. Only whole lines count, so a command that merely
 * mentions the marker mid-line cannot fake it.
 */
export function parseExitStatus(consoleText: string): number | null {
  const re = new RegExp(`(?:^|\\n)${EXIT_MARKER} (\\d+)\\r?(?:\\n|$)`, "g");
  let status: number | null = null;
  for (const match of consoleText.matchAll(re)) status = Number(match[1]);
  return status;
}

function accelArgs(): string[] {
  // KVM only on request: a CI machine that is itself a Firecracker VM has a
  // /dev/kvm that opens, and then its nested KVM aborts QEMU 7.2 ("failed
  // to set MSR 0x10a") or fails to emulate the guest kernel's BMI2
  // instructions ("KVM internal error ... emulation failure"). QEMU tries
  // each -accel in order, so a /dev/kvm that cannot be opened falls back.
  return Deno.env.get("IVSOCK_E2E_KVM") === "1" && isCharDevice("/dev/kvm")
    ? ["-accel", "kvm", "-accel", "tcg"]
    : ["-accel", "tcg"];
}

/** QEMU option values end at a comma; a literal comma is written twice. */
function qemuOptValue(value: string): string {
  return value.replaceAll(",", ",,");
}

function base64(text: string): string {
  const bytes = new TextEncoder().encode(text);
  let binary = "";
  for (const b of bytes) binary += String.fromCharCode(b);
  return btoa(binary);
}

function isFile(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

function isCharDevice(path: string): boolean {
  try {
    return Deno.statSync(path).isCharDevice === true;
  } catch {
    return false;
  }
}

function fileSize(path: string): number {
  try {
    return Deno.statSync(path).size;
  } catch (err) {
    throw new TypeError(
      `Expected the ivshmem file ${path} to exist, could not stat it: ${
        err instanceof Error ? err.message : String(err)
      }`,
      { cause: err },
    );
  }
}

function signal(child: Deno.ChildProcess, sig: Deno.Signal): void {
  try {
    child.kill(sig);
  } catch {
    // Already exited: nothing to stop.
  }
}
