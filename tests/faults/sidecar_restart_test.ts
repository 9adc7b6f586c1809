/**
 * The sidecar dies under load and comes back on the same config. The guest
 * agent is never restarted: it notices the device restart (or the new
 * region, after a clean stop that removed the old one) and renegotiates by
 * itself; connections that were open end visibly on both sides, and new
 * ones work through every route.
 */
import { assert, assertEquals, assertNotEquals } from "../../dev_deps.ts";
import { within } from "../_support/process_stack.ts";
import { kinds, spec, startClient, waitMoved } from "./_traffic.ts";
import { type TwoWayStack, twoWayStack } from "./_two_way_stack.ts";

/** Runs one clean transfer each way and expects both to check out. */
async function bothWaysWork(
  t: TwoWayStack,
  bytes = 2 << 20,
): Promise<void> {
  const fresh = [
    startClient(t.h2gPort, spec(bytes, bytes)),
    startClient(t.fwdPort, spec(bytes, bytes)),
  ];
  assertEquals(
    await within(kinds(fresh), 30_000, "new transfers"),
    ["ok", "ok"],
  );
}

Deno.test({
  name:
    "a sidecar killed under load and started again on the same config is renegotiated by the guest agent, and new connections work",
  async fn() {
    const t = await twoWayStack();
    try {
      await t.stack.startServe();
      const guest = await t.stack.startGuest();
      await t.stack.waitReadyz(200);
      const big = 1 << 30; // far more than moves before the kill
      const running = [
        ...Array.from(
          { length: 3 },
          () => startClient(t.h2gPort, spec(big, big)),
        ),
        ...Array.from(
          { length: 3 },
          () => startClient(t.fwdPort, spec(big, big)),
        ),
      ];
      await waitMoved(running, 512 << 10);
      const inode = Deno.statSync(t.stack.region).ino;
      const runs = guest.lines.filter((l) => l.includes("transport running"))
        .length;

      await t.stack.serve!.stop("SIGKILL");
      // Every transfer ends, visibly, on the side the test can see from both
      // ends: host clients at once (their process died), guest-local clients
      // once the agent notices the device is gone.
      assertEquals(
        await within(kinds(running), 15_000, "transfers to end"),
        Array(6).fill("ended"),
      );

      await t.stack.startServe();
      assertEquals(
        Deno.statSync(t.stack.region).ino,
        inode,
        "the restarted sidecar re-attaches to the same region file",
      );
      await guest.waitFor(
        (l) => l.includes("transport running"),
        15_000,
        guest.lines.length,
      );
      assert(
        guest.lines.filter((l) => l.includes("transport running")).length >
          runs,
      );
      await t.stack.waitReadyz(200);
      await bothWaysWork(t);

      // The far ends of the killed transfers ended too, and nothing is left.
      await t.allSessionsEnded();
      for (const r of [...t.guestService.results, ...t.hostTarget.results]) {
        assertNotEquals(r.outcome.kind, "mismatch");
      }
      await t.stack.waitNoConnections();
      assertEquals(t.stack.guest, guest, "the guest agent never restarted");
      assertEquals(
        t.stack.serve!.lines.some((l) => l.includes("ERROR")),
        false,
      );
    } finally {
      await t.close();
    }
  },
});

Deno.test({
  name:
    "a sidecar stopped cleanly (its region removed) and started again: the guest agent follows it to the new region file",
  async fn() {
    const t = await twoWayStack();
    try {
      await t.stack.startServe();
      const guest = await t.stack.startGuest();
      await t.stack.waitReadyz(200);
      const inode = Deno.statSync(t.stack.region).ino;
      const running = [
        startClient(t.h2gPort, spec(1 << 30, 1 << 30)),
        startClient(t.fwdPort, spec(1 << 30, 1 << 30)),
      ];
      await waitMoved(running, 512 << 10);

      assertEquals((await t.stack.serve!.stop("SIGTERM")).code, 0);
      assertEquals(
        await within(kinds(running), 15_000, "transfers to end"),
        ["ended", "ended"],
      );
      await t.stack.startServe();
      assertNotEquals(
        Deno.statSync(t.stack.region).ino,
        inode,
        "a new region file",
      );
      await guest.waitFor((l) => l.includes("re-opening"), 15_000);
      await t.stack.waitReadyz(200);
      await bothWaysWork(t);
      await t.allSessionsEnded();
      await t.stack.waitNoConnections();
      assertEquals(t.stack.guest, guest, "the guest agent never restarted");
    } finally {
      await t.close();
    }
  },
});
