/**
 * TCP clients that reset before they are even accepted: the connection
 * waits in the listener's backlog, the client's RST arrives, and the
 * accept then fails for that one connection (Deno reports NotConnected).
 * Neither the sidecar's route nor the guest agent's forward may stop
 * accepting because of it.
 *
 * The process that owns the listener is paused (SIGSTOP) while the clients
 * connect and reset, so every one of them is reset before its accept.
 */
import { assertEquals } from "../../dev_deps.ts";
import { openSocket } from "../_support/checked_transfer.ts";
import { type Child } from "../_support/child.ts";
import { within } from "../_support/process_stack.ts";
import { kinds, spec, startClient } from "./_traffic.ts";
import { twoWayStack } from "./_two_way_stack.ts";

/** Pauses `child`, connects and resets `n` clients to `port`, resumes it. */
async function resetWhilePaused(
  child: Child,
  port: number,
  n: number,
): Promise<void> {
  child.process.kill("SIGSTOP");
  try {
    for (let i = 0; i < n; i++) (await openSocket(port)).resetAndDestroy();
    await new Promise((r) => setTimeout(r, 100));
  } finally {
    child.process.kill("SIGCONT");
  }
}

Deno.test({
  name:
    "clients that reset while waiting to be accepted stop neither a route nor a guest forward from accepting",
  async fn() {
    const t = await twoWayStack({ driverTimeoutMs: 3000 });
    const { stack, h2gPort, fwdPort } = t;
    try {
      const serve = await stack.startServe();
      const guest = await stack.startGuest();
      await stack.waitReadyz(200);

      await resetWhilePaused(serve, h2gPort, 20);
      await resetWhilePaused(guest, fwdPort, 20);

      const after = [
        startClient(h2gPort, spec(1 << 20, 1 << 20)),
        startClient(fwdPort, spec(1 << 20, 1 << 20)),
      ];
      assertEquals(await within(kinds(after), 20_000, "transfers after"), [
        "ok",
        "ok",
      ]);
      await stack.waitNoConnections();
    } finally {
      await t.close();
    }
  },
});
