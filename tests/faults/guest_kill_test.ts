/**
 * The guest agent process is killed (SIGKILL) in the middle of transfers
 * both ways. The sidecar, never restarted, drops the guest after its driver
 * timeout: host clients and host targets see their connections end, the
 * admin API lists none, `/readyz` says why. A new guest agent process
 * attaches to the same region and new connections work.
 */
import { assert, assertEquals, assertMatch } from "../../dev_deps.ts";
import { waitUntil, within } from "../_support/process_stack.ts";
import { kinds, spec, startClient, waitMoved } from "./_traffic.ts";
import { twoWayStack } from "./_two_way_stack.ts";

/** The device's driver timeout in this test (the default is 3000). */
const DRIVER_TIMEOUT_MS = 1000;

Deno.test({
  name:
    "a guest agent killed mid-transfer: host-side connections end after the driver timeout, and a new guest agent process serves new connections",
  async fn() {
    const t = await twoWayStack({ driverTimeoutMs: DRIVER_TIMEOUT_MS });
    const { stack, guestService, hostTarget, h2gPort, fwdPort } = t;
    try {
      const serve = await stack.startServe();
      const first = await stack.startGuest();
      await stack.waitReadyz(200);
      const big = 1 << 30; // far more than moves before the kill
      const hostClients = Array.from(
        { length: 4 },
        () => startClient(h2gPort, spec(big, big)),
      );
      const guestClients = Array.from(
        { length: 2 },
        () => startClient(fwdPort, spec(big, big)),
      );
      await waitMoved([...hostClients, ...guestClients], 512 << 10);
      await waitUntil(
        () => hostTarget.open === 2 && guestService.open === 4,
        5000,
        () => "every session to reach its far end",
      );
      const connections = await stack.admin("/v1/connections");
      assertEquals(connections.body.length, 6);

      const killedAt = Date.now();
      await first.stop("SIGKILL");
      // The guest's own side ends at once (its process is gone); the host
      // side ends when the sidecar gives up on the guest.
      assertEquals(
        await within(kinds(guestClients), 5000, "guest-local clients"),
        ["ended", "ended"],
      );
      assertEquals(
        await within(
          kinds(hostClients),
          DRIVER_TIMEOUT_MS + 5000,
          "host clients",
        ),
        ["ended", "ended", "ended", "ended"],
      );
      const took = Date.now() - killedAt;
      assert(
        took >= DRIVER_TIMEOUT_MS * 0.8,
        `host connections end through the driver timeout, not before (${took} ms)`,
      );
      await waitUntil(
        () => hostTarget.open === 0 && guestService.open === 0,
        5000,
        () => "every far-end session to end",
      );
      for (const r of [...hostTarget.results, ...guestService.results]) {
        assertEquals(r.outcome.kind, "ended", JSON.stringify(r.outcome));
      }
      await serve.waitFor(
        (l) => l.includes("guest driver stopped responding"),
        5000,
      );
      await stack.waitNoConnections();
      const notReady = await stack.waitReadyz(503);
      assertMatch(notReady.reason, /guest driver stopped responding/);

      // While no guest runs, new host connections are refused at once.
      assertEquals(
        await within(
          kinds([startClient(h2gPort, spec(1000, 1000))]),
          5000,
          "a client while no guest runs",
        ),
        ["ended"],
      );

      const second = await stack.startGuest();
      await stack.waitReadyz(200);
      const fresh = [
        startClient(h2gPort, spec(4 << 20, 4 << 20)),
        startClient(h2gPort, spec(1, 3 << 20)),
        startClient(fwdPort, spec(4 << 20, 4 << 20)),
        startClient(fwdPort, spec(3 << 20, 0)),
      ];
      assertEquals(
        await within(kinds(fresh), 30_000, "new transfers"),
        ["ok", "ok", "ok", "ok"],
      );
      await stack.waitNoConnections();
      assertEquals(stack.serve, serve, "the sidecar never restarted");
      assertEquals(second.lines.some((l) => / ERROR /.test(l)), false);
      assertEquals(serve.lines.some((l) => / ERROR /.test(l)), false);
    } finally {
      await t.close();
    }
  },
});
