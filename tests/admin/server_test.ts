/**
 * The admin listener: a real HTTP server on loopback, and the refusal to
 * listen off loopback without a token.
 */
import "../_support/ffi.ts";
import { assert, assertEquals, assertRejects } from "../../dev_deps.ts";
import { AdminAuthError } from "../../admin/auth.ts";
import { startAdminServer } from "../../admin/server.ts";
import { echoRoute, freePort, loneSidecar } from "./_helpers.ts";

Deno.test("startAdminServer serves the API on 127.0.0.1 with the real port, and stops", async () => {
  const sidecar = await loneSidecar([echoRoute("web")]);
  const logs: string[] = [];
  try {
    const server = await startAdminServer(
      sidecar,
      { host: "127.0.0.1", port: 0 },
      (level, message) => logs.push(`${level}: ${message}`),
    );
    try {
      const m = /^http:\/\/127\.0\.0\.1:(\d+)$/.exec(server.url);
      assert(m !== null && Number(m[1]) > 0, server.url);
      assertEquals(logs, [`info: admin API on ${server.url}`]);

      const health = await fetch(`${server.url}/healthz`);
      assertEquals(health.status, 200);
      assertEquals((await health.json()).status, "ok");

      const routes = await fetch(`${server.url}/v1/routes`);
      assertEquals(routes.status, 200);
      const list = await routes.json();
      assertEquals(list.map((r: { name: string }) => r.name), ["web"]);
    } finally {
      await server.stop();
    }
    await assertRejects(
      () => fetch(`${server.url}/healthz`).then((r) => r.body?.cancel()),
      TypeError,
      undefined,
      "nothing listens after stop()",
    );
  } finally {
    await sidecar.stop(0);
  }
});

Deno.test("startAdminServer refuses to listen on 0.0.0.0 without a token and leaves no listener", async () => {
  const sidecar = await loneSidecar();
  try {
    const port = freePort();
    const logs: string[] = [];
    await assertRejects(
      () =>
        startAdminServer(
          sidecar,
          { host: "0.0.0.0", port },
          (_, message) => logs.push(message),
        ),
      AdminAuthError,
      "admin.host 0.0.0.0 is not a loopback address",
    );
    assertEquals(logs, [], "nothing was announced");
    // The port is still free: nothing was bound, even for a moment.
    const l = Deno.listen({ hostname: "0.0.0.0", port });
    l.close();
  } finally {
    await sidecar.stop(0);
  }
});

Deno.test("startAdminServer with a token from the environment requires it on the wire", async () => {
  const sidecar = await loneSidecar();
  const name = `IVSOCK_TEST_SERVER_TOKEN_${Deno.pid}`;
  const token = "wire-token-0123456789";
  Deno.env.set(name, token);
  try {
    const logs: string[] = [];
    const server = await startAdminServer(
      sidecar,
      { host: "127.0.0.1", port: 0, token: { env: name } },
      (_, message) => logs.push(message),
    );
    try {
      assertEquals(logs, [
        `admin API on ${server.url} (bearer token required)`,
      ]);
      assert(!logs.some((l) => l.includes(token)), "the token is not logged");
      const without = await fetch(`${server.url}/healthz`);
      assertEquals(without.status, 401);
      await without.body?.cancel();
      const withIt = await fetch(`${server.url}/healthz`, {
        headers: { authorization: `Bearer ${token}` },
      });
      assertEquals(withIt.status, 200);
      await withIt.body?.cancel();
    } finally {
      await server.stop();
    }
  } finally {
    Deno.env.delete(name);
    await sidecar.stop(0);
  }
});
