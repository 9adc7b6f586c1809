/**
 * The QEMU launcher itself: argument checks and exit-marker parsing (always
 * run), and with QEMU installed, that a timeout and a failed start both
 * leave nothing behind (the sanitizers check that).
 *
 * @module
 */

import {
  assert,
  assertEquals,
  assertMatch,
  assertRejects,
  assertThrows,
} from "../../dev_deps.ts";
import {
  buildGuest,
  findQemu,
  parseExitStatus,
  qemuArgs,
  runGuest,
} from "./run_guest.ts";

const noQemu = findQemu() === undefined;

/** A stand-in kernel and initrd: qemuArgs only checks that they exist. */
function withFakeImage(fn: (kernel: string, initrd: string) => void): void {
  const dir = Deno.makeTempDirSync({ prefix: "ivsock-e2e-args-" });
  try {
    Deno.writeTextFileSync(`${dir}/vmlinuz`, "");
    Deno.writeTextFileSync(`${dir}/initrd.img`, "");
    fn(`${dir}/vmlinuz`, `${dir}/initrd.img`);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
}

Deno.test("parseExitStatus() takes the last whole EXIT line", () => {
  assertEquals(parseExitStatus("boot\r\nIVSOCK-GUEST-EXIT 3\r\n"), 3);
  assertEquals(
    parseExitStatus("IVSOCK-GUEST-EXIT 1\nmore\nIVSOCK-GUEST-EXIT 0\n"),
    0,
  );
  assertEquals(parseExitStatus("echo IVSOCK-GUEST-EXIT 0\n"), null);
  assertEquals(parseExitStatus("no marker at all"), null);
});

Deno.test("qemuArgs() builds an ivshmem-plain machine with the command in base64", () => {
  withFakeImage((kernel, initrd) => {
    const args = qemuArgs({
      kernel,
      initrd,
      shmPath: "/dev/shm/a,b",
      shmSize: 1 << 22,
      command: "echo hi",
      timeoutMs: 1000,
    });
    const append = args[args.indexOf("-append") + 1]!;
    assertEquals(
      append,
      `console=ttyS0 quiet panic=-1 ivsock.cmd=${btoa("echo hi")}`,
    );
    assert(
      args.includes(
        "memory-backend-file,id=hm,share=on,mem-path=/dev/shm/a,,b,size=4194304",
      ),
      `expected the memory backend with the comma doubled, got ${
        args.join(" ")
      }`,
    );
    assert(args.includes("ivshmem-plain,memdev=hm"));
    assertEquals(args[args.indexOf("-m") + 1], "1024");
  });
});

Deno.test("qemuArgs() builds an ivshmem-doorbell machine", () => {
  withFakeImage((kernel, initrd) => {
    const args = qemuArgs({
      kernel,
      initrd,
      doorbellSocket: "/tmp/iv.sock",
      vectors: 2,
      command: "true",
      timeoutMs: 1000,
      memoryMiB: 512,
    });
    assert(args.includes("socket,path=/tmp/iv.sock,id=iv"));
    assert(args.includes("ivshmem-doorbell,chardev=iv,vectors=2"));
    assertEquals(args[args.indexOf("-m") + 1], "512");
  });
});

Deno.test("qemuArgs() rejects conflicting or out-of-range options", () => {
  withFakeImage((kernel, initrd) => {
    const base = { kernel, initrd, command: "true", timeoutMs: 1000 };
    assertThrows(
      () => qemuArgs({ ...base, shmPath: "/x", doorbellSocket: "/y" }),
      TypeError,
      "got both",
    );
    assertThrows(
      () => qemuArgs({ ...base, shmPath: "/x", shmSize: 3 << 20 }),
      RangeError,
      "power of two",
    );
    assertThrows(
      () => qemuArgs({ ...base, command: "x".repeat(2000) }),
      RangeError,
      "2047 characters",
    );
    assertThrows(
      () => qemuArgs({ ...base, kernel: `${kernel}.missing` }),
      TypeError,
      "found no file",
    );
  });
});

Deno.test({
  name: "runGuest() reports QEMU's own error when it cannot start",
  ignore: noQemu,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "ivsock-e2e-fail-" });
    try {
      await Deno.writeFile(`${dir}/vmlinuz`, new Uint8Array(0));
      await Deno.writeFile(`${dir}/initrd.img`, new Uint8Array(0));
      // No ivshmem server listens there, so QEMU gives up at start-up.
      const socket = `${dir}/absent.sock`;
      const err = await assertRejects(
        () =>
          runGuest({
            kernel: `${dir}/vmlinuz`,
            initrd: `${dir}/initrd.img`,
            doorbellSocket: socket,
            command: "true",
            timeoutMs: 30_000,
          }),
        Error,
        "before IVSOCK-GUEST-READY",
      );
      assertMatch(err.message, /absent\.sock/);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "runGuest() kills a guest that outlives its timeout",
  ignore: noQemu,
  async fn() {
    const image = await buildGuest();
    const timeoutMs = 4000;
    const result = await runGuest({
      kernel: image.kernel,
      initrd: image.initrd,
      command: "sleep 600",
      timeoutMs,
    });
    assert(result.timedOut, `expected a timeout, got:\n${result.console}`);
    assertEquals(result.status, null);
    assert(
      result.elapsedMs < timeoutMs + 10_000,
      `expected QEMU gone soon after the timeout, it took ${result.elapsedMs} ms`,
    );
  },
});

Deno.test({
  name: "runGuest() stops QEMU and rethrows when onConsole throws",
  ignore: noQemu,
  async fn() {
    const image = await buildGuest();
    const started = performance.now();
    await assertRejects(
      () =>
        runGuest({
          kernel: image.kernel,
          initrd: image.initrd,
          command: "sleep 600",
          timeoutMs: 60_000,
          onConsole: () => {
            throw new Error("seen enough");
          },
        }),
      Error,
      "seen enough",
    );
    const ms = performance.now() - started;
    assert(ms < 20_000, `expected QEMU stopped at once, it took ${ms} ms`);
  },
});

Deno.test({
  name:
    "runGuest() reports QEMU's pid through onSpawn and stops QEMU when its signal aborts",
  ignore: noQemu,
  async fn() {
    const image = await buildGuest();
    const controller = new AbortController();
    let pid: number | undefined;
    let seen = "";
    const started = performance.now();
    const result = await runGuest({
      kernel: image.kernel,
      initrd: image.initrd,
      command: "sleep 600",
      timeoutMs: 60_000,
      onSpawn: (p) => (pid = p),
      onConsole: (text) => {
        // A marker may arrive split across two pieces.
        seen += text;
        if (seen.includes("IVSOCK-GUEST-READY")) controller.abort();
      },
      signal: controller.signal,
    });
    const ms = performance.now() - started;
    assert(pid !== undefined && pid > 0, `expected a pid, got ${pid}`);
    assert(result.aborted, `expected an abort, got:\n${result.console}`);
    assertEquals(result.timedOut, false);
    assertEquals(result.status, null);
    assert(ms < 30_000, `expected QEMU stopped at once, it took ${ms} ms`);
  },
});
