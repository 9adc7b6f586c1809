/**
 * The region file is removed (`rm /dev/shm/...`) while the sidecar and the
 * guest agent run. Both keep their mappings, so traffic goes on; both say so
 * in their logs and `/readyz` reports it. A restarted sidecar creates a new
 * region, and the guest agent (file mode), once the device on its old
 * mapping is gone, re-opens the path and renegotiates with the new device.
 */
import "../_support/ffi.ts";
import {
  assert,
  assertEquals,
  assertMatch,
  assertNotEquals,
} from "../../dev_deps.ts";
import { parseConfig } from "../../config/load.ts";
import { Sidecar } from "../../proxy/sidecar.ts";
import { waitUntil, within } from "../_support/process_stack.ts";
import { kinds, spec, startClient, waitMoved } from "./_traffic.ts";
import { twoWayStack } from "./_two_way_stack.ts";
import { exists } from "../_support/exists.ts";

Deno.test({
  name:
    "a region file removed under a running sidecar and guest: traffic goes on, both log it, /readyz reports it, and a restarted sidecar's new region is picked up by the guest",
  async fn() {
    const t = await twoWayStack();
    const { stack, guestService, hostTarget, h2gPort, fwdPort } = t;
    try {
      const serve = await stack.startServe();
      const guest = await stack.startGuest();
      await stack.waitReadyz(200);
      const inode = Deno.statSync(stack.region).ino;
      const size = 24 << 20;
      const during = [
        startClient(h2gPort, spec(size, size)),
        startClient(fwdPort, spec(size, size)),
      ];
      await waitMoved(during, 256 << 10);

      await Deno.remove(stack.region);
      await serve.waitFor(
        (l) => /WARN .*region file .* was removed/.test(l),
        5000,
      );
      await guest.waitFor(
        (l) => /WARN .*region file .* was removed/.test(l),
        5000,
      );
      const ready = await stack.admin("/readyz");
      assertEquals(ready.status, 200, "the attached guest still works");
      assertEquals(ready.body.status, "ready");
      assertEquals(ready.body.region, "removed");
      assertMatch(ready.body.warning, /no new guest can attach/);

      // Transfers under way finish, checked, and new ones work too.
      assertEquals(
        await within(kinds(during), 60_000, "transfers under way"),
        ["ok", "ok"],
      );
      const after = [
        startClient(h2gPort, spec(1 << 20, 1 << 20)),
        startClient(fwdPort, spec(1 << 20, 1 << 20)),
      ];
      assertEquals(await within(kinds(after), 30_000, "new transfers"), [
        "ok",
        "ok",
      ]);

      // A clean restart: the old sidecar has nothing to remove; the new one
      // creates a new region, and the guest follows it.
      assertEquals((await serve.stop("SIGTERM")).code, 0);
      assertEquals(exists(stack.region), false);
      await stack.startServe();
      assertNotEquals(Deno.statSync(stack.region).ino, inode);
      await guest.waitFor((l) => l.includes("re-opening it"), 15_000);
      assertEquals(await stack.waitReadyz(200), { status: "ready" });
      const again = [
        startClient(h2gPort, spec(2 << 20, 2 << 20)),
        startClient(fwdPort, spec(2 << 20, 2 << 20)),
      ];
      assertEquals(await within(kinds(again), 30_000, "after the restart"), [
        "ok",
        "ok",
      ]);
      await waitUntil(
        () => guestService.open === 0 && hostTarget.open === 0,
        10_000,
        () => "service sessions to end",
      );
      await stack.waitNoConnections();
      assertEquals(stack.guest, guest, "the guest agent never restarted");
      assert(
        !guest.lines.some((l) => / ERROR /.test(l)),
        "no error in the guest's log",
      );
    } finally {
      await t.close();
    }
  },
});

Deno.test("a sidecar whose region path now holds another sidecar's file leaves that file alone when it stops", async () => {
  const region = `/dev/shm/ivsock-test-faults-replaced-${Deno.pid}`;
  const config = parseConfig({
    device: { region, size: "256KiB" },
    routes: [],
    admin: false,
  });
  const logs: string[] = [];
  const first = await Sidecar.start(config, (_level, msg) => logs.push(msg));
  let second: Sidecar | null = null;
  try {
    await Deno.remove(region);
    // The lock is on the old file, so a second sidecar may create a new one.
    second = await Sidecar.start(config, () => {});
    await waitUntil(() => first.regionFile === "replaced", 5000);
    assert(logs.some((l) => l.includes(`region file ${region} was replaced`)));
    await first.stop(0);
    assertEquals(exists(region), true, "the second sidecar's region is kept");
    await second.stop(0);
    assertEquals(exists(region), false, "and removed by its own sidecar");
  } finally {
    await first.stop(0);
    await second?.stop(0);
    await Deno.remove(region).catch(() => {});
  }
});
