/**
 * A short soak in CI: the same program as `deno task soak`, for about 25
 * seconds. Every connection checks out or, when reset on purpose, is seen
 * reset by the other side; no mismatch, no unexpected failure, nothing left
 * behind, both children exit cleanly.
 */
import { assert, assertEquals } from "../../dev_deps.ts";
import { Child } from "../_support/child.ts";

Deno.test({
  name:
    "a 25-second soak moves checked streams both ways with injected resets and no mismatch",
  async fn() {
    const soak = new Child(
      "soak",
      new URL("./main.ts", import.meta.url),
      ["--minutes", "0.4", "--sample-seconds", "2"],
    );
    try {
      const line = await soak.waitFor(
        (l) => l.startsWith("soak-result "),
        180_000,
      );
      const r = JSON.parse(line.slice("soak-result ".length));
      assertEquals(
        {
          mismatches: r.mismatches,
          failures: r.failures,
          problems: r.problems,
        },
        { mismatches: 0, failures: 0, problems: [] },
        JSON.stringify(r.notes),
      );
      assert(r.completed > 500, `only ${r.completed} connections completed`);
      const injected = r.resetsInjected.client + r.resetsInjected.service;
      assert(injected > 10, `only ${injected} resets injected`);
      assertEquals(r.resetsSeen + r.resetsUnaccepted, injected);
      for (const kind of ["h2g", "ws", "g2h"]) {
        assert(r.completedByKind[kind] > 0, `no ${kind} connection completed`);
      }
      assertEquals((await soak.exited(60_000)).code, 0);
    } finally {
      // SIGTERM lets the soak stop its own children and remove its files;
      // SIGKILL only if it does not finish.
      try {
        soak.process.kill("SIGTERM");
      } catch {
        // Exited already.
      }
      await soak.exited(90_000).catch(() => soak.stop("SIGKILL"));
    }
  },
});
