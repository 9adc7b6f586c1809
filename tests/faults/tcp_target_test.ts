/**
 * The TCP target of a guest-initiated route misbehaves: it refuses
 * connections, or resets one in the middle of a transfer. The guest's
 * program (a TCP client of the agent's forward) sees its connection end at
 * once; the sidecar counts and announces it, holds nothing afterwards, and
 * the route works again as soon as the target does, without restarting
 * anything. Other connections on the route are not disturbed.
 */
import "../_support/ffi.ts";
import { assert, assertEquals } from "../../dev_deps.ts";
import { type SidecarPair, sidecarPair } from "../_support/sidecar_pair.ts";
import { freePort, waitUntil, within } from "../_support/process_stack.ts";
import {
  type CheckedService,
  checkedService,
  kinds,
  spec,
  startClient,
} from "./_traffic.ts";

function dbRoute(targetPort: number) {
  return {
    name: "db",
    from: { type: "vsock" as const, port: 5432 },
    to: { type: "tcp" as const, host: "127.0.0.1", port: targetPort },
  };
}

/** Waits until neither side holds a connection. */
async function nothingLeft(pair: SidecarPair): Promise<void> {
  await waitUntil(
    () =>
      pair.sidecar.routes.connections().length === 0 &&
      pair.sidecar.engine.connectionCount === 0 &&
      pair.guest.engine.connectionCount === 0,
    5000,
    () =>
      `no connections (route ${pair.sidecar.routes.connections().length}, sidecar engine ${pair.sidecar.engine.connectionCount}, guest engine ${pair.guest.engine.connectionCount})`,
  );
}

Deno.test("a TCP target that refuses ends the guest's connections at once, and the route works once the target listens", async () => {
  const targetPort = freePort();
  const fwdPort = freePort();
  const pair = await sidecarPair({
    routes: [dbRoute(targetPort)],
    forwards: [{ listen: { host: "127.0.0.1", port: fwdPort }, port: 5432 }],
  });
  let target: CheckedService | null = null;
  try {
    const t0 = Date.now();
    const refused = Array.from(
      { length: 3 },
      () => startClient(fwdPort, spec(100_000, 100_000)),
    );
    assertEquals(
      await within(kinds(refused), 5000, "refused clients"),
      ["ended", "ended", "ended"],
    );
    assert(Date.now() - t0 < 2000, "refused at once, not by a timeout");
    // At the vsock level the guest sees a reset.
    const conn = await pair.guest.engine.connect(5432);
    assertEquals(
      (await within(conn.closed, 5000, "vsock reset")).reason,
      "ECONNRESET",
    );

    const db = pair.sidecar.routes.get("db")!;
    await waitUntil(() => (db.stats.rejected.connect ?? 0) === 4, 5000);
    const denies = pair.events.filter((e) => e.type === "deny");
    assertEquals(denies.length, 4);
    for (const d of denies) {
      assert(
        d.type === "deny" && d.reason.includes(`TCP 127.0.0.1:${targetPort}`),
        JSON.stringify(d),
      );
    }
    await nothingLeft(pair);

    target = await checkedService(targetPort);
    const fresh = [
      startClient(fwdPort, spec(3 << 20, 3 << 20)),
      startClient(fwdPort, spec(0, 1 << 20)),
    ];
    assertEquals(await within(kinds(fresh), 30_000, "after recovery"), [
      "ok",
      "ok",
    ]);
    await waitUntil(() => target!.open === 0, 5000);
    assertEquals(target.results.map((r) => r.outcome.kind), ["ok", "ok"]);
    await nothingLeft(pair);
  } finally {
    await pair.stop();
    await target?.close();
  }
});

Deno.test("a TCP target that resets mid-stream ends that guest connection visibly, leaves the others alone, and the route keeps working", async () => {
  const target = await checkedService();
  const fwdPort = freePort();
  const pair = await sidecarPair({
    routes: [dbRoute(target.port)],
    forwards: [{ listen: { host: "127.0.0.1", port: fwdPort }, port: 5432 }],
  });
  const guestEnds: string[] = [];
  pair.guest.engine.setObserver((e) => {
    if (e.type === "close") guestEnds.push(e.info.reason);
  });
  try {
    const size = 16 << 20;
    const resets = Array.from(
      { length: 3 },
      () => startClient(fwdPort, spec(size, size, 1 << 20)),
    );
    const bystanders = Array.from(
      { length: 2 },
      () => startClient(fwdPort, spec(4 << 20, 4 << 20)),
    );
    assertEquals(await within(kinds(resets), 15_000, "reset transfers"), [
      "ended",
      "ended",
      "ended",
    ]);
    for (const r of resets) {
      const o = await r.outcome;
      assert(o.bytesIn < size, "cut short, not completed");
    }
    assertEquals(
      await within(kinds(bystanders), 30_000, "bystanders"),
      ["ok", "ok"],
    );
    await waitUntil(() => target.open === 0, 5000);
    assertEquals(
      target.results.map((r) => r.outcome.kind).sort(),
      ["ok", "ok", "reset", "reset", "reset"],
    );

    await waitUntil(
      () => pair.events.filter((e) => e.type === "close").length === 5,
      5000,
    );
    const outcomes = pair.events.flatMap((e) =>
      e.type === "close" ? [e.outcome] : []
    ).sort();
    assertEquals(outcomes, [
      "closed",
      "closed",
      "reset-by-peer",
      "reset-by-peer",
      "reset-by-peer",
    ]);
    assertEquals(
      pair.events.filter((e) => e.type === "reset" && e.by === "peer").length,
      3,
    );
    // The guest's vsock side of each is reset (RST), not closed gracefully.
    assertEquals(guestEnds.sort(), [
      "ECONNRESET",
      "ECONNRESET",
      "ECONNRESET",
      "closed",
      "closed",
    ]);
    await nothingLeft(pair);

    const fresh = [startClient(fwdPort, spec(2 << 20, 2 << 20))];
    assertEquals(await within(kinds(fresh), 30_000, "after the resets"), [
      "ok",
    ]);
    await nothingLeft(pair);
  } finally {
    await pair.stop();
    await target.close();
  }
});

Deno.test("a guest service that resets mid-stream ends the host client's connection and is reported as reset by the guest", async () => {
  const service = await checkedService();
  const port = freePort();
  const pair = await sidecarPair({
    routes: [{
      name: "web",
      from: { type: "tcp", host: "127.0.0.1", port },
      to: { type: "vsock", port: 80 },
    }],
    exposes: [{
      port: 80,
      target: { kind: "tcp", host: "127.0.0.1", port: service.port },
    }],
  });
  try {
    const size = 8 << 20;
    const resets = Array.from(
      { length: 4 },
      (_, i) => startClient(port, spec(size, size, 100_000 + i * 400_000)),
    );
    assertEquals(
      await within(kinds(resets), 15_000, "reset transfers"),
      Array(4).fill("ended"),
    );
    await waitUntil(
      () => pair.events.filter((e) => e.type === "close").length === 4,
      5000,
    );
    assertEquals(
      pair.events.flatMap((e) => e.type === "close" ? [e.outcome] : []),
      Array(4).fill("reset-by-guest"),
    );
    assertEquals(pair.sidecar.engine.stats.closed, { ECONNRESET: 4 });
    await nothingLeft(pair);
    const fresh = [startClient(port, spec(2 << 20, 2 << 20))];
    assertEquals(await within(kinds(fresh), 30_000, "after the resets"), [
      "ok",
    ]);
    await nothingLeft(pair);
  } finally {
    await pair.stop();
    await service.close();
  }
});
