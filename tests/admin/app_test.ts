/**
 * The admin API through `adminApp(sidecar).request()`: every endpoint and
 * error path, against a real sidecar and guest agent whose vsock port 80
 * echoes.
 */
import "../_support/ffi.ts";
import {
  assert,
  assertEquals,
  assertMatch,
  assertRejects,
} from "../../dev_deps.ts";
import { adminApp } from "../../admin/app.ts";
import { AdminAuthError, isLoopback, loadToken } from "../../admin/auth.ts";
import {
  call,
  echoPair,
  echoRoute,
  freePort,
  loneSidecar,
  open,
  pattern,
  portOf,
  probe,
  readEnd,
  roundTrip,
  waitFor,
} from "./_helpers.ts";

// --- health and readiness -------------------------------------------------

Deno.test("GET /healthz answers ok with the process uptime", async () => {
  const sidecar = await loneSidecar();
  try {
    const r = await call(adminApp(sidecar), "GET", "/healthz");
    assertEquals(r.status, 200);
    assertEquals(r.body.status, "ok");
    assert(Number.isInteger(r.body.uptimeMs) && r.body.uptimeMs >= 0);
  } finally {
    await sidecar.stop(0);
  }
});

Deno.test("GET /readyz is 200 while a guest driver runs", async () => {
  const e = await echoPair();
  try {
    const r = await call(e.app, "GET", "/readyz");
    assertEquals(r.status, 200);
    assertEquals(r.body, { status: "ready" });
  } finally {
    await e.stop();
  }
});

Deno.test("GET /readyz is 503 with the reason once the guest agent stops", async () => {
  const e = await echoPair([], { driverTimeoutMs: 300 });
  try {
    await e.pair.guest.stop(0);
    await waitFor(
      () => !e.pair.sidecar.engine.active,
      "the sidecar to notice the guest is gone",
    );
    const r = await call(e.app, "GET", "/readyz");
    assertEquals(r.status, 503);
    assertEquals(r.body.status, "not-ready");
    assertEquals(r.body.state, "needs-reset");
    assertMatch(
      r.body.reason,
      /^the device needs a reset: guest driver stopped responding/,
    );
  } finally {
    await e.stop();
  }
});

Deno.test("GET /readyz is 503 with the reason when no guest driver ever started", async () => {
  const sidecar = await loneSidecar();
  try {
    const r = await call(adminApp(sidecar), "GET", "/readyz");
    assertEquals(r.status, 503);
    assertEquals(r.body, {
      status: "not-ready",
      state: "waiting",
      reason: "no guest driver has reached DRIVER_OK",
    });
  } finally {
    await sidecar.stop(0);
  }
});

// --- device ---------------------------------------------------------------

Deno.test("GET /v1/device reports status bits, features, guest CID, queues, poll notification and generations", async () => {
  const e = await echoPair();
  try {
    const r = await call(e.app, "GET", "/v1/device");
    assertEquals(r.status, 200);
    const d = r.body;
    assertEquals(d.state, "running");
    assertEquals(d.reason, "");
    assertEquals(d.region, {
      path: e.pair.sidecar.regionPath,
      size: 4 << 20,
    });
    assertEquals(d.guestCid, 3);
    assertEquals(d.status, {
      value: 1 | 2 | 4 | 8,
      bits: ["ACKNOWLEDGE", "DRIVER", "DRIVER_OK", "FEATURES_OK"],
    });
    assertEquals(d.features.offered, [
      "bit 0 (STREAM)",
      "bit 1 (SEQPACKET)",
      "bit 3 (MRG_RXBUF)",
      "bit 28 (RING_INDIRECT_DESC)",
      "bit 29 (RING_EVENT_IDX)",
      "bit 32 (VERSION_1)",
    ]);
    assert(d.features.negotiated.includes("bit 0 (STREAM)"));
    assert(d.features.negotiated.includes("bit 32 (VERSION_1)"));
    for (const f of d.features.negotiated) {
      assert(d.features.offered.includes(f), `${f} was offered`);
    }
    assertEquals(d.notification, "poll");
    assertEquals(d.generations, { device: 1, driver: 1 });
    assertEquals(Object.keys(d.queues), ["rx", "tx", "event"]);
    for (const [name, q] of Object.entries(d.queues)) {
      const { size, broken } = q as { size: number; broken: unknown };
      assert(
        size >= 1 && size <= 1024 && (size & (size - 1)) === 0,
        `${name} has a power-of-two size, got ${size}`,
      );
      assertEquals(broken, null);
      for (const k of ["pending", "popped", "dropped", "used"]) {
        assert(Number.isInteger((q as Record<string, unknown>)[k]), k);
      }
    }
    assertEquals(d.connections, 0);
  } finally {
    await e.stop();
  }
});

Deno.test("GET /v1/device without a guest shows no queues and nothing negotiated", async () => {
  const sidecar = await loneSidecar();
  try {
    const d = (await call(adminApp(sidecar), "GET", "/v1/device")).body;
    assertEquals(d.state, "waiting");
    assertEquals(d.queues, null);
    assertEquals(d.features.negotiated, []);
    assertEquals(d.status.bits, []);
    assertEquals(d.generations.driver, 0);
  } finally {
    await sidecar.stop(0);
  }
});

// --- routes -----------------------------------------------------------------

Deno.test("GET /v1/routes lists every route with where it listens and its counters", async () => {
  const e = await echoPair([echoRoute("web"), echoRoute("api")]);
  try {
    const r = await call(e.app, "GET", "/v1/routes");
    assertEquals(r.status, 200);
    assertEquals(r.body.map((x: { name: string }) => x.name), ["web", "api"]);
    const web = r.body[0];
    assertEquals(web.enabled, true);
    assertEquals(web.from, { type: "tcp", host: "127.0.0.1", port: 0 });
    assertEquals(web.to, { type: "vsock", port: 80, socket: "stream" });
    assertEquals(web.limits, {
      maxConnections: 1024,
      connectTimeoutMs: 2000,
      idleTimeoutMs: 0,
    });
    assertMatch(web.listening, /^127\.0\.0\.1:\d+$/);
    assert(portOf(web.listening) > 0, "the real port, not 0");
    assertEquals(web.connections, 0);
    assertEquals(web.stats, {
      accepted: 0,
      rejected: {},
      closed: {},
      bytesToGuest: 0,
      bytesFromGuest: 0,
    });
  } finally {
    await e.stop();
  }
});

Deno.test("POST /v1/routes creates a route that listens at once (201)", async () => {
  const e = await echoPair();
  try {
    const r = await call(e.app, "POST", "/v1/routes", echoRoute("web"));
    assertEquals(r.status, 201);
    assertEquals(r.body.name, "web");
    assertEquals(r.body.enabled, true);
    const conn = await open(portOf(r.body.listening));
    try {
      await roundTrip(conn, pattern(1000));
    } finally {
      conn.close();
    }
    const listed = await call(e.app, "GET", "/v1/routes");
    assertEquals(listed.body.map((x: { name: string }) => x.name), ["web"]);
  } finally {
    await e.stop();
  }
});

Deno.test("POST /v1/routes rejects an invalid body with the field path of each problem (400)", async () => {
  const e = await echoPair();
  try {
    const r = await call(e.app, "POST", "/v1/routes", {
      name: "web",
      from: { type: "tcp", port: "http" },
      to: { type: "vsock", port: 80 },
    });
    assertEquals(r.status, 400);
    assertEquals(r.body.error, "invalid body");
    assertEquals(r.body.problems, [
      'from.port: expected an integer from 0 to 65535, received "http"',
    ]);

    const several = await call(e.app, "POST", "/v1/routes", {
      name: "-bad",
      from: { type: "udp", port: 1 },
      to: { type: "vsock", port: 80 },
      extra: true,
    });
    assertEquals(several.status, 400);
    const problems: string[] = several.body.problems;
    assert(problems.some((p) => p.startsWith("name: ")), problems.join("\n"));
    assert(problems.some((p) => p.startsWith("from")), problems.join("\n"));
    assert(
      problems.some((p) => p.includes('unknown field "extra"')),
      problems.join("\n"),
    );
    assertEquals((await call(e.app, "GET", "/v1/routes")).body, []);
  } finally {
    await e.stop();
  }
});

Deno.test("POST /v1/routes rejects a body that is not JSON (400)", async () => {
  const e = await echoPair();
  try {
    const r = await call(e.app, "POST", "/v1/routes", "{ not json");
    assertEquals(r.status, 400);
    assertEquals(r.body.error, "invalid body");
    assertEquals(r.body.problems.length, 1);
    assertMatch(r.body.problems[0], /^\(body\): not valid JSON: /);
  } finally {
    await e.stop();
  }
});

Deno.test("POST /v1/routes refuses a name that is taken (409)", async () => {
  const e = await echoPair([echoRoute("web")]);
  try {
    const before = e.pair.sidecar.routes.get("web")!.listening;
    const r = await call(e.app, "POST", "/v1/routes", echoRoute("web"));
    assertEquals(r.status, 409);
    assertEquals(r.body.error, 'a route named "web" already exists');
    assertEquals(e.pair.sidecar.routes.get("web")!.listening, before);
  } finally {
    await e.stop();
  }
});

Deno.test("POST /v1/routes refuses a TCP port another route listens on (409)", async () => {
  const fixed = freePort();
  const e = await echoPair([echoRoute("fixed", fixed), echoRoute("any")]);
  try {
    // Taken by a route's spec: the table sees the conflict itself.
    const bySpec = await call(
      e.app,
      "POST",
      "/v1/routes",
      echoRoute("b", fixed),
    );
    assertEquals(bySpec.status, 409);
    assertMatch(bySpec.body.error, new RegExp(`127\\.0\\.0\\.1:${fixed}`));
    // Taken by a route that asked for port 0: the kernel refuses it.
    const anyPort = portOf(e.pair.sidecar.routes.get("any")!.listening);
    const byKernel = await call(
      e.app,
      "POST",
      "/v1/routes",
      echoRoute("c", anyPort),
    );
    assertEquals(byKernel.status, 409);
    assertMatch(byKernel.body.error, /already in use/);
    assertEquals(
      (await call(e.app, "GET", "/v1/routes")).body.map((
        x: { name: string },
      ) => x.name),
      ["fixed", "any"],
    );
    assertEquals(await probe(fixed), "open");
    assertEquals(await probe(anyPort), "open");
  } finally {
    await e.stop();
  }
});

Deno.test("GET /v1/routes/{name} returns one route, and 404 JSON for an unknown name", async () => {
  const e = await echoPair([echoRoute("web")]);
  try {
    const r = await call(e.app, "GET", "/v1/routes/web");
    assertEquals(r.status, 200);
    assertEquals(r.body.name, "web");
    assertEquals(r.body.listening, e.pair.sidecar.routes.get("web")!.listening);
    const missing = await call(e.app, "GET", "/v1/routes/nope");
    assertEquals(missing.status, 404);
    assertMatch(missing.headers.get("content-type")!, /^application\/json/);
    assertEquals(missing.body, { error: 'no route named "nope"' });
  } finally {
    await e.stop();
  }
});

Deno.test("PUT /v1/routes/{name} moves the listener while a live connection on the old port keeps working and stays listed", async () => {
  const e = await echoPair([echoRoute("web")]);
  const live = await open(portOf(e.pair.sidecar.routes.get("web")!.listening));
  try {
    const oldPort = portOf(e.pair.sidecar.routes.get("web")!.listening);
    await roundTrip(live, pattern(100));
    const newPort = freePort();
    const r = await call(e.app, "PUT", "/v1/routes/web", {
      from: { type: "tcp", port: newPort },
      to: { type: "vsock", port: 80 },
    });
    assertEquals(r.status, 200);
    assertEquals(r.body.name, "web");
    assertEquals(r.body.listening, `127.0.0.1:${newPort}`);
    assertEquals(await probe(newPort), "open", "the new port listens");
    assertEquals(await probe(oldPort), "refused", "the old port does not");
    await roundTrip(live, pattern(200, 2));
    const conns = (await call(e.app, "GET", "/v1/connections")).body;
    const mine = conns.find((c: { remote: string }) =>
      c.remote === `127.0.0.1:${live.localAddr.port}`
    );
    assert(mine !== undefined, "the live connection is still listed");
    assertEquals(mine.route, "web");
    assertEquals(mine.state, "open");
    assertEquals(mine.bytesToGuest, 300);
  } finally {
    live.close();
    await e.stop();
  }
});

Deno.test("PUT /v1/routes/{name} changing only enabled keeps live connections, refuses new ones, then accepts again", async () => {
  const e = await echoPair([echoRoute("web")]);
  const port = portOf(e.pair.sidecar.routes.get("web")!.listening);
  const live = await open(port);
  try {
    await roundTrip(live, pattern(10));
    const off = await call(e.app, "PUT", "/v1/routes/web", {
      ...echoRoute("web"),
      enabled: false,
    });
    assertEquals(off.status, 200);
    assertEquals(off.body.enabled, false);
    assertEquals(off.body.listening, `127.0.0.1:${port}`, "same listener");
    assertEquals(await probe(port), "closed", "a new connection is refused");
    await roundTrip(live, pattern(10, 2));
    assertEquals(e.pair.sidecar.routes.get("web")!.stats.rejected.disabled, 1);

    const on = await call(e.app, "PUT", "/v1/routes/web", {
      ...echoRoute("web"),
      enabled: true,
    });
    assertEquals(on.status, 200);
    assertEquals(on.body.enabled, true);
    assertEquals(await probe(port), "open", "new connections work again");
    await roundTrip(live, pattern(10, 3));
    assertEquals(
      e.pair.events.filter((x) => x.type === "route").map((x) =>
        x.type === "route" ? x.change : ""
      ),
      ["disabled", "enabled"],
      "announced as route events",
    );
  } finally {
    live.close();
    await e.stop();
  }
});

Deno.test("PUT /v1/routes/{name} rejects a body that names another route (400)", async () => {
  const e = await echoPair([echoRoute("web")]);
  try {
    const r = await call(e.app, "PUT", "/v1/routes/web", echoRoute("other"));
    assertEquals(r.status, 400);
    assertEquals(r.body.problems, [
      'name: must be "web" as in the URL, received "other"',
    ]);
    assertEquals(e.pair.sidecar.routes.get("other"), undefined);
  } finally {
    await e.stop();
  }
});

Deno.test("PUT /v1/routes/{name} rejects an invalid or non-JSON body (400)", async () => {
  const e = await echoPair([echoRoute("web")]);
  try {
    const bad = await call(e.app, "PUT", "/v1/routes/web", {
      from: { type: "tcp", port: 70000 },
      to: { type: "vsock", port: 80 },
    });
    assertEquals(bad.status, 400);
    assertEquals(bad.body.problems, [
      "from.port: expected an integer from 0 to 65535, received 70000",
    ]);
    const notJson = await call(e.app, "PUT", "/v1/routes/web", "nope");
    assertEquals(notJson.status, 400);
    assertMatch(notJson.body.problems[0], /^\(body\): not valid JSON/);
  } finally {
    await e.stop();
  }
});

Deno.test("PUT /v1/routes/{name} on an unknown route is 404", async () => {
  const e = await echoPair();
  try {
    const r = await call(e.app, "PUT", "/v1/routes/nope", echoRoute("nope"));
    assertEquals(r.status, 404);
    assertEquals(r.body, { error: 'no route named "nope"' });
    assertEquals(e.pair.sidecar.routes.list(), []);
  } finally {
    await e.stop();
  }
});

Deno.test("PUT /v1/routes/{name} to another route's port is 409 and leaves the old route working", async () => {
  const fixed = freePort();
  const e = await echoPair([echoRoute("web"), echoRoute("db", fixed)]);
  try {
    const before = e.pair.sidecar.routes.get("web")!.listening;
    const r = await call(e.app, "PUT", "/v1/routes/web", {
      from: { type: "tcp", port: fixed },
      to: { type: "vsock", port: 80 },
    });
    assertEquals(r.status, 409);
    assertMatch(r.body.error, /already used by route "db"/);
    assertEquals(e.pair.sidecar.routes.get("web")!.listening, before);
    assertEquals(await probe(portOf(before)), "open");
    assertEquals(await probe(fixed), "open", "db still works too");
  } finally {
    await e.stop();
  }
});

Deno.test("PUT /v1/routes/{name} to a port another program holds is 409 and the route keeps its port", async () => {
  const e = await echoPair([echoRoute("web")]);
  const squatter = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  try {
    const before = e.pair.sidecar.routes.get("web")!.listening;
    const r = await call(e.app, "PUT", "/v1/routes/web", {
      from: { type: "tcp", port: (squatter.addr as Deno.NetAddr).port },
      to: { type: "vsock", port: 80 },
    });
    assertEquals(r.status, 409);
    assertMatch(r.body.error, /already in use/);
    assertEquals(await probe(portOf(before)), "open", "still on its old port");
    assertEquals(e.pair.sidecar.routes.get("web")!.listening, before);
  } finally {
    squatter.close();
    await e.stop();
  }
});

Deno.test("DELETE /v1/routes/{name} stops listening (204) and leaves live connections running", async () => {
  const e = await echoPair([echoRoute("web")]);
  const port = portOf(e.pair.sidecar.routes.get("web")!.listening);
  const live = await open(port);
  try {
    await roundTrip(live, pattern(50));
    const r = await call(e.app, "DELETE", "/v1/routes/web");
    assertEquals(r.status, 204);
    assertEquals(r.body, "");
    assertEquals((await call(e.app, "GET", "/v1/routes/web")).status, 404);
    assertEquals(await probe(port), "refused");
    await roundTrip(live, pattern(50, 2));
    const conns = (await call(e.app, "GET", "/v1/connections")).body;
    assertEquals(conns.length, 1, "still listed");
    assertEquals(conns[0].route, "web");
  } finally {
    live.close();
    await e.stop();
  }
});

Deno.test("DELETE /v1/routes/{name}?drain=true closes live connections gracefully: the client reads EOF", async () => {
  const e = await echoPair([echoRoute("web")]);
  const port = portOf(e.pair.sidecar.routes.get("web")!.listening);
  const live = await open(port);
  try {
    await roundTrip(live, pattern(50));
    const r = await call(e.app, "DELETE", "/v1/routes/web?drain=true");
    assertEquals(r.status, 204);
    assertEquals(await readEnd(live), "eof");
    await waitFor(
      async () =>
        (await call(e.app, "GET", "/v1/connections")).body.length === 0,
      "the drained connection to leave the list",
    );
    assertEquals(await probe(port), "refused");
    assert(
      e.pair.events.some((x) =>
        x.type === "close" && x.outcome === "closed-by-admin"
      ),
    );
  } finally {
    live.close();
    await e.stop();
  }
});

Deno.test("DELETE /v1/routes/{name} on an unknown route is 404", async () => {
  const e = await echoPair();
  try {
    const r = await call(e.app, "DELETE", "/v1/routes/nope");
    assertEquals(r.status, 404);
    assertEquals(r.body, { error: 'no route named "nope"' });
  } finally {
    await e.stop();
  }
});

// --- populate ---------------------------------------------------------------

Deno.test("POST /v1/populate creates routes, then reports the same list unchanged without restarting listeners", async () => {
  const e = await echoPair();
  const list = [echoRoute("web"), echoRoute("api")];
  let live: Deno.TcpConn | null = null;
  try {
    const first = await call(e.app, "POST", "/v1/populate", list);
    assertEquals(first.status, 200);
    assertEquals(first.body.created, ["web", "api"]);
    assertEquals(first.body.replaced, []);
    assertEquals(first.body.unchanged, []);
    assertEquals(first.body.routes.length, 2);
    const port = portOf(e.pair.sidecar.routes.get("web")!.listening);
    live = await open(port);
    await roundTrip(live, pattern(64));

    const again = await call(e.app, "POST", "/v1/populate", list);
    assertEquals(again.status, 200);
    assertEquals(again.body.created, []);
    assertEquals(again.body.replaced, []);
    assertEquals(again.body.unchanged, ["web", "api"]);
    assertEquals(
      portOf(e.pair.sidecar.routes.get("web")!.listening),
      port,
      "the listener was not restarted",
    );
    await roundTrip(live, pattern(64, 2));
    assertEquals(e.pair.sidecar.routes.get("web")!.connections.size, 1);
    assertEquals(
      e.pair.events.filter((x) => x.type === "route").length,
      2,
      "only the two additions",
    );
  } finally {
    live?.close();
    await e.stop();
  }
});

Deno.test("POST /v1/populate replaces a route whose spec changed and keeps its live connection", async () => {
  const e = await echoPair([echoRoute("web"), echoRoute("api")]);
  const live = await open(portOf(e.pair.sidecar.routes.get("web")!.listening));
  try {
    await roundTrip(live, pattern(8));
    const changed = {
      ...echoRoute("web"),
      limits: { maxConnections: 5 },
    };
    const r = await call(e.app, "POST", "/v1/populate", [
      changed,
      echoRoute("api"),
    ]);
    assertEquals(r.status, 200);
    assertEquals(r.body.created, []);
    assertEquals(r.body.replaced, ["web"]);
    assertEquals(r.body.unchanged, ["api"]);
    assertEquals(
      e.pair.sidecar.routes.get("web")!.spec.limits.maxConnections,
      5,
    );
    await roundTrip(live, pattern(8, 2));
    const ids = (await call(e.app, "GET", "/v1/connections")).body;
    assertEquals(ids.length, 1, "the old route's connection is still listed");
  } finally {
    live.close();
    await e.stop();
  }
});

Deno.test("POST /v1/populate is idempotent for a route that was disabled through PUT", async () => {
  const e = await echoPair([echoRoute("web")]);
  try {
    const off = { ...echoRoute("web"), enabled: false };
    assertEquals((await call(e.app, "PUT", "/v1/routes/web", off)).status, 200);
    const r = await call(e.app, "POST", "/v1/populate", [off]);
    assertEquals(r.status, 200);
    assertEquals(
      { replaced: r.body.replaced, unchanged: r.body.unchanged },
      { replaced: [], unchanged: ["web"] },
      "the route is already exactly as asked",
    );
  } finally {
    await e.stop();
  }
});

Deno.test("POST /v1/populate rejects duplicate names in one request (400) and creates nothing", async () => {
  const e = await echoPair();
  try {
    const r = await call(e.app, "POST", "/v1/populate", [
      echoRoute("web"),
      echoRoute("api"),
      echoRoute("web"),
    ]);
    assertEquals(r.status, 400);
    assertEquals(r.body.problems, ['[2].name: "web" is also the name of [0]']);
    assertEquals(e.pair.sidecar.routes.list(), []);
  } finally {
    await e.stop();
  }
});

Deno.test("POST /v1/populate rejects an invalid item with its index in the field path (400)", async () => {
  const e = await echoPair();
  try {
    const r = await call(e.app, "POST", "/v1/populate", [
      echoRoute("web"),
      {
        name: "api",
        from: { type: "tcp", port: "x" },
        to: { type: "vsock", port: 80 },
      },
    ]);
    assertEquals(r.status, 400);
    assertEquals(r.body.problems, [
      '[1].from.port: expected an integer from 0 to 65535, received "x"',
    ]);
    assertEquals(e.pair.sidecar.routes.list(), [], "nothing was created");

    const wrapped = await call(e.app, "POST", "/v1/populate", {
      routes: [{ name: "api", from: { type: "tcp", port: 0 } }],
    });
    assertEquals(wrapped.status, 400);
    assertEquals(wrapped.body.problems, [
      "[0].to: required, expected an object",
    ]);
    const neither = await call(e.app, "POST", "/v1/populate", { web: 1 });
    assertEquals(neither.status, 400);
    const notJson = await call(e.app, "POST", "/v1/populate", "[");
    assertEquals(notJson.status, 400);
    assertMatch(notJson.body.problems[0], /^\(body\): not valid JSON/);
  } finally {
    await e.stop();
  }
});

Deno.test("POST /v1/populate accepts both a bare array and an object with routes", async () => {
  const e = await echoPair();
  try {
    const bare = await call(e.app, "POST", "/v1/populate", [echoRoute("a")]);
    assertEquals(bare.status, 200);
    assertEquals(bare.body.created, ["a"]);
    const wrapped = await call(e.app, "POST", "/v1/populate", {
      routes: [echoRoute("a"), echoRoute("b")],
    });
    assertEquals(wrapped.status, 200);
    assertEquals(wrapped.body.created, ["b"]);
    assertEquals(wrapped.body.unchanged, ["a"]);
    assertEquals(
      wrapped.body.routes.map((x: { name: string }) => x.name),
      ["a", "b"],
    );
  } finally {
    await e.stop();
  }
});

// --- connections ------------------------------------------------------------

Deno.test("GET /v1/connections lists a live connection with its route, ports, remote, state and growing byte counts", async () => {
  const e = await echoPair([echoRoute("web")]);
  const live = await open(portOf(e.pair.sidecar.routes.get("web")!.listening));
  try {
    await roundTrip(live, pattern(1000));
    const list = (await call(e.app, "GET", "/v1/connections")).body;
    assertEquals(list.length, 1);
    const c = list[0];
    assertMatch(c.id, /^c\d+$/);
    assertEquals(c.route, "web");
    assertEquals(c.direction, "host-to-guest");
    assertEquals(c.vsock.guestPort, 80);
    assert(Number.isInteger(c.vsock.localPort) && c.vsock.localPort > 0);
    assertEquals(c.remote, `127.0.0.1:${live.localAddr.port}`);
    assertEquals(c.state, "open");
    assertEquals(c.bytesToGuest, 1000);
    assertEquals(c.bytesFromGuest, 1000);
    assert(Number.isInteger(c.ageMs) && c.ageMs >= 0);
    assertEquals(new Date(c.lastActivity).toISOString(), c.lastActivity);

    await new Promise((r) => setTimeout(r, 20));
    await roundTrip(live, pattern(500, 2));
    const later = (await call(e.app, "GET", "/v1/connections")).body[0];
    assertEquals(later.id, c.id);
    assertEquals(later.bytesToGuest, 1500);
    assertEquals(later.bytesFromGuest, 1500);
    assert(later.ageMs >= c.ageMs + 20, "ageMs grows");
    assert(
      Date.parse(later.lastActivity) > Date.parse(c.lastActivity),
      "lastActivity moves with traffic",
    );
  } finally {
    live.close();
    await e.stop();
  }
});

Deno.test("GET /v1/connections/{id} returns one connection, and 404 JSON for an unknown id", async () => {
  const e = await echoPair([echoRoute("web")]);
  const live = await open(portOf(e.pair.sidecar.routes.get("web")!.listening));
  try {
    await roundTrip(live, pattern(10));
    const [c] = (await call(e.app, "GET", "/v1/connections")).body;
    const one = await call(e.app, "GET", `/v1/connections/${c.id}`);
    assertEquals(one.status, 200);
    assertEquals(one.body.id, c.id);
    assertEquals(one.body.remote, c.remote);
    const missing = await call(e.app, "GET", "/v1/connections/c999999");
    assertEquals(missing.status, 404);
    assertEquals(missing.body, { error: 'no connection named "c999999"' });
  } finally {
    live.close();
    await e.stop();
  }
});

Deno.test("DELETE /v1/connections/{id} closes gracefully: the TCP client reads EOF", async () => {
  const e = await echoPair([echoRoute("web")]);
  const live = await open(portOf(e.pair.sidecar.routes.get("web")!.listening));
  try {
    await roundTrip(live, pattern(10));
    const [c] = (await call(e.app, "GET", "/v1/connections")).body;
    const r = await call(e.app, "DELETE", `/v1/connections/${c.id}`);
    assertEquals(r.status, 204);
    assertEquals(await readEnd(live), "eof");
    await waitFor(
      () =>
        e.pair.events.some((x) =>
          x.type === "close" && x.connection === c.id &&
          x.outcome === "closed-by-admin"
        ),
      "a close event by the administrator",
    );
    assertEquals(
      (await call(e.app, "GET", `/v1/connections/${c.id}`)).status,
      404,
    );
  } finally {
    live.close();
    await e.stop();
  }
});

Deno.test("DELETE /v1/connections/{id}?reset=true ends the client connection and records a reset by admin", async () => {
  const e = await echoPair([echoRoute("web")]);
  const live = await open(portOf(e.pair.sidecar.routes.get("web")!.listening));
  try {
    await roundTrip(live, pattern(10));
    const [c] = (await call(e.app, "GET", "/v1/connections")).body;
    const r = await call(e.app, "DELETE", `/v1/connections/${c.id}?reset=true`);
    assertEquals(r.status, 204);
    await readEnd(live); // EOF or a reset: either way it ends
    await waitFor(
      () =>
        e.pair.events.some((x) =>
          x.type === "reset" && x.connection === c.id && x.by === "admin"
        ),
      "a reset event by the administrator",
    );
    const close = e.pair.events.find((x) =>
      x.type === "close" && x.connection === c.id
    );
    assert(close?.type === "close");
    assertEquals(close.outcome, "reset-by-admin");
  } finally {
    live.close();
    await e.stop();
  }
});

Deno.test("DELETE /v1/connections/{id} on an unknown id is 404", async () => {
  const e = await echoPair();
  try {
    const r = await call(e.app, "DELETE", "/v1/connections/c999999?reset=true");
    assertEquals(r.status, 404);
    assertEquals(r.body, { error: 'no connection named "c999999"' });
  } finally {
    await e.stop();
  }
});

// --- unknown paths, methods and sizes ---------------------------------------

Deno.test("an unknown path is 404 JSON", async () => {
  const sidecar = await loneSidecar();
  try {
    const app = adminApp(sidecar);
    for (const path of ["/", "/v1", "/v1/routes/a/b", "/v2/routes"]) {
      const r = await call(app, "GET", path);
      assertEquals(r.status, 404, path);
      assertEquals(r.body, { error: `no such endpoint: GET ${path}` });
    }
  } finally {
    await sidecar.stop(0);
  }
});

Deno.test("a known path with the wrong method is 405 JSON with an Allow header", async () => {
  const sidecar = await loneSidecar();
  try {
    const app = adminApp(sidecar);
    const cases: Array<[string, string, string]> = [
      ["PATCH", "/v1/routes/x", "GET, PUT, DELETE"],
      ["POST", "/healthz", "GET"],
      ["DELETE", "/v1/routes", "GET, POST"],
      ["GET", "/v1/populate", "POST"],
      ["PUT", "/v1/connections/c1", "GET, DELETE"],
      ["POST", "/metrics", "GET"],
    ];
    for (const [method, path, allow] of cases) {
      const r = await call(app, method, path);
      assertEquals(r.status, 405, `${method} ${path}`);
      assertEquals(r.headers.get("allow"), allow);
      assertEquals(r.body, {
        error: `method ${method} is not allowed on ${path}`,
        allow: allow.split(", "),
      });
    }
  } finally {
    await sidecar.stop(0);
  }
});

Deno.test("a request body over the limit is 413", async () => {
  const sidecar = await loneSidecar();
  try {
    const app = adminApp(sidecar, { maxBodyBytes: 64 });
    const big = JSON.stringify({ ...echoRoute("web"), pad: "x".repeat(200) });
    const r = await call(app, "POST", "/v1/routes", big);
    assertEquals(r.status, 413);
    assertEquals(r.body, { error: "request body larger than 64 bytes" });
    const populate = await call(app, "POST", "/v1/populate", big);
    assertEquals(populate.status, 413);
    assertEquals(sidecar.routes.list(), []);
    // Under the limit the body is read and validated as usual.
    const small = await call(app, "POST", "/v1/routes", { name: "x" });
    assertEquals(small.status, 400);
  } finally {
    await sidecar.stop(0);
  }
});

// --- token ------------------------------------------------------------------

Deno.test("with a token, a request without it or with a wrong one is 401, and with it 200", async () => {
  const sidecar = await loneSidecar();
  const token = "s3cret-token-0123456789";
  try {
    const app = adminApp(sidecar, { token });
    const none = await call(app, "GET", "/healthz");
    assertEquals(none.status, 401);
    assertEquals(none.headers.get("www-authenticate"), 'Bearer realm="ivsock"');
    assertEquals(none.body, { error: "a valid bearer token is required" });
    const wrong = await call(app, "GET", "/healthz", undefined, {
      authorization: "Bearer not-the-token-at-all",
    });
    assertEquals(wrong.status, 401);
    assertEquals(
      wrong.headers.get("www-authenticate"),
      'Bearer realm="ivsock"',
    );
    const basic = await call(app, "GET", "/healthz", undefined, {
      authorization: `Basic ${btoa(`x:${token}`)}`,
    });
    assertEquals(basic.status, 401);
    const right = await call(app, "GET", "/healthz", undefined, {
      authorization: `Bearer ${token}`,
    });
    assertEquals(right.status, 200);
    assertEquals(right.body.status, "ok");
    // Every endpoint is behind it, including the unknown ones.
    assertEquals((await call(app, "GET", "/v1/routes")).status, 401);
    assertEquals((await call(app, "GET", "/nope")).status, 401);
  } finally {
    await sidecar.stop(0);
  }
});

Deno.test("loadToken refuses a non-loopback host without a token, naming admin.host", async () => {
  for (const host of ["0.0.0.0", "10.0.0.1", "::", "example.com"]) {
    const err = await assertRejects(
      () => loadToken(host, undefined),
      AdminAuthError,
      "admin.host",
    );
    assert(err.message.includes(host), err.message);
  }
});

Deno.test("loadToken accepts a loopback host without a token", async () => {
  for (const host of ["127.0.0.1", "::1", "[::1]", "localhost"]) {
    assertEquals(await loadToken(host, undefined), null, host);
  }
});

Deno.test("loadToken reads a token from an environment variable, trimmed", async () => {
  const name = `IVSOCK_TEST_TOKEN_${Deno.pid}`;
  Deno.env.set(name, "  abcdefghijklmnopqrstuvwxyz\n");
  try {
    assertEquals(
      await loadToken("0.0.0.0", { env: name }),
      "abcdefghijklmnopqrstuvwxyz",
    );
  } finally {
    Deno.env.delete(name);
  }
  const err = await assertRejects(
    () => loadToken("0.0.0.0", { env: name }),
    AdminAuthError,
  );
  assertEquals(
    err.message,
    `admin.token: environment variable ${name} is not set`,
  );
});

Deno.test("loadToken reads a token from a file, and refuses a file it cannot read", async () => {
  const dir = await Deno.makeTempDir({ prefix: "ivsock-admin-token-" });
  try {
    const file = `${dir}/token`;
    await Deno.writeTextFile(file, "0123456789abcdef0123\n");
    assertEquals(await loadToken("10.0.0.1", { file }), "0123456789abcdef0123");

    const missing = `${dir}/missing`;
    const err = await assertRejects(
      () => loadToken("10.0.0.1", { file: missing }),
      AdminAuthError,
    );
    assert(
      err.message.startsWith(`admin.token: cannot read ${missing}: `),
      err.message,
    );
    await assertRejects(
      () => loadToken("10.0.0.1", { file: dir }),
      AdminAuthError,
      `admin.token: cannot read ${dir}`,
      "a directory is not a token file",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("loadToken refuses a token shorter than 16 characters", async () => {
  const name = `IVSOCK_TEST_SHORT_${Deno.pid}`;
  Deno.env.set(name, "  short-token   ");
  try {
    await assertRejects(
      () => loadToken("127.0.0.1", { env: name }),
      AdminAuthError,
      "admin.token: the token must be at least 16 characters, received 11",
    );
    Deno.env.set(name, "exactly-16-chars");
    assertEquals(
      await loadToken("127.0.0.1", { env: name }),
      "exactly-16-chars",
    );
  } finally {
    Deno.env.delete(name);
  }
});

Deno.test("isLoopback accepts 127.0.0.0/8, ::1 and localhost, and nothing else", () => {
  for (const host of ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"]) {
    assertEquals(isLoopback(host), true, host);
  }
  for (const host of ["0.0.0.0", "10.0.0.1", "::", "[::]", "128.0.0.1"]) {
    assertEquals(isLoopback(host), false, host);
  }
});

// --- OpenAPI ------------------------------------------------------------------

Deno.test("GET /openapi.json is OpenAPI 3.1.0 with every endpoint of the header comment and the Route schema", async () => {
  const source = await Deno.readTextFile(
    new URL("../../admin/app.ts", import.meta.url),
  );
  const block = /```text\n([\s\S]*?)```/.exec(source)?.[1];
  assert(block !== undefined, "app.ts has the endpoint table");
  const endpoints = [
    ...block.matchAll(/^\s*\*\s+(GET|POST|PUT|DELETE)\s+(\S+)/gm),
  ].map((m) => [m[1]!.toLowerCase(), m[2]!.split("?")[0]!] as const);
  assertEquals(endpoints.length, 15, "the table as written today");

  const sidecar = await loneSidecar();
  try {
    const r = await call(adminApp(sidecar), "GET", "/openapi.json");
    assertEquals(r.status, 200);
    const doc = r.body;
    assertEquals(doc.openapi, "3.1.0");
    for (const [method, path] of endpoints) {
      assert(
        doc.paths[path]?.[method] !== undefined,
        `${method.toUpperCase()} ${path} is documented`,
      );
    }
    const route = doc.components.schemas.Route;
    for (const field of ["name", "from", "to"]) {
      assert(route.required.includes(field), `Route requires ${field}`);
    }
    assert(doc.components.schemas.RouteInput.required.includes("name"));
    assert(doc.components.schemas.ConnectionInfo !== undefined);
    assert(doc.components.schemas.Error !== undefined);
  } finally {
    await sidecar.stop(0);
  }
});
