/**
 * A real Linux guest under QEMU maps the ivshmem BAR through sysfs (with the
 * project's own `mapFile`, run by `guest_probe.ts`) and exchanges bytes with
 * the host through a `/dev/shm` file.
 *
 * Needs `qemu-system-x86_64` (Debian's qemu-system-x86); without it the test
 * is ignored and says why. Set IVSOCK_E2E_VERBOSE=1 to stream the guest's
 * console to stderr.
 *
 * @module
 */

import { assert, assertEquals } from "../../dev_deps.ts";
import { buildGuest, findQemu, QEMU, runGuest } from "./run_guest.ts";
import { EXPECT_OFFSET, REPLY_OFFSET } from "./guest_probe.ts";

const qemu = findQemu();
if (qemu === undefined) {
  console.log(
    `guest_boot_test: ignored: ${QEMU} is not on PATH (apt-get install qemu-system-x86)`,
  );
}

const SHM_SIZE = 4 * 1024 * 1024;
const PATTERN_LENGTH = 64;
// Under TCG a run takes 6-10 s here; the margin is for a loaded machine.
const BOOT_TIMEOUT_MS = 180_000;

function hex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

Deno.test({
  name:
    "a real guest maps the ivshmem BAR through sysfs, reads the host's bytes and writes a reply",
  ignore: qemu === undefined,
  async fn() {
    const buildStart = performance.now();
    const image = await buildGuest();
    const buildMs = performance.now() - buildStart;
    const cached = image.log.includes("build_guest: cached:");

    // Fresh random bytes every run, so a stale file or image cannot pass.
    const pattern = crypto.getRandomValues(new Uint8Array(PATTERN_LENGTH));
    const reply = crypto.getRandomValues(new Uint8Array(PATTERN_LENGTH));
    const shmPath = `/dev/shm/ivsock-e2e-${Deno.pid}`;
    const contents = new Uint8Array(SHM_SIZE);
    contents.set(pattern, EXPECT_OFFSET);
    Deno.writeFileSync(shmPath, contents, { createNew: true, mode: 0o600 });
    try {
      const verbose = Deno.env.get("IVSOCK_E2E_VERBOSE") === "1";
      const result = await runGuest({
        kernel: image.kernel,
        initrd: image.initrd,
        shmPath,
        shmSize: SHM_SIZE,
        command: `deno run --allow-all tests/e2e/guest_probe.ts ${
          hex(pattern)
        } ${hex(reply)}`,
        timeoutMs: BOOT_TIMEOUT_MS,
        ...(verbose
          ? {
            onConsole: (text: string) =>
              Deno.stderr.writeSync(new TextEncoder().encode(text)),
          }
          : {}),
      });

      for (const line of result.console.split(/\r?\n/)) {
        if (line.startsWith("guest_probe:")) console.log(`  ${line}`);
      }
      console.log(
        `guest_boot_test: image ${cached ? "cached" : "built"} in ${
          (buildMs / 1000).toFixed(1)
        } s; boot to ready ${
          result.readyMs === null ? "-" : (result.readyMs / 1000).toFixed(1)
        } s, boot to exit ${(result.elapsedMs / 1000).toFixed(1)} s`,
      );

      const transcript =
        `guest console:\n${result.console}\nQEMU stderr:\n${result.qemuStderr}`;
      assert(
        !result.timedOut,
        `expected the guest to power off within ${BOOT_TIMEOUT_MS} ms\n${transcript}`,
      );
      assertEquals(
        result.status,
        0,
        `expected guest_probe.ts to exit 0\n${transcript}`,
      );
      const after = Deno.readFileSync(shmPath);
      assertEquals(
        hex(after.subarray(REPLY_OFFSET, REPLY_OFFSET + PATTERN_LENGTH)),
        hex(reply),
        `expected the guest's reply at offset ${REPLY_OFFSET} of ${shmPath}`,
      );
      assertEquals(
        hex(after.subarray(EXPECT_OFFSET, EXPECT_OFFSET + PATTERN_LENGTH)),
        hex(pattern),
        `expected the host's pattern at offset ${EXPECT_OFFSET} to be left alone`,
      );
    } finally {
      Deno.removeSync(shmPath);
    }
  },
});
