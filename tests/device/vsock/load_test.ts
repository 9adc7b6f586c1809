/**
 * Load across two processes: the host engine (device role) in one, the
 * guest engine (driver role) in the other, over a /dev/shm region. 1,000
 * concurrent connections each move a seeded random payload of up to 1 MiB
 * both ways; each side checks the SHA-256 the other computed. Zero
 * mismatches, zero failures.
 *
 * IVSOCK_LOAD_CONNECTIONS and IVSOCK_LOAD_MAX_BYTES scale it for soak runs.
 */
import { assertEquals } from "../../../dev_deps.ts";
import { Child } from "../../_support/child.ts";

const CONNECTIONS = Number(Deno.env.get("IVSOCK_LOAD_CONNECTIONS") ?? 1000);
const MAX_BYTES = Number(Deno.env.get("IVSOCK_LOAD_MAX_BYTES") ?? 1 << 20);
const SEED = 20261123;

Deno.test({
  name:
    `${CONNECTIONS} concurrent connections move seeded payloads both ways across two processes, SHA-256 checked`,
  async fn() {
    const path = `/dev/shm/ivsock-test-load-${Deno.pid}`;
    const guest = new Child(
      "guest",
      new URL("./_load_guest.ts", import.meta.url),
      [path, String(SEED)],
    );
    const host = new Child(
      "host",
      new URL("./_load_host.ts", import.meta.url),
      [
        path,
        String(CONNECTIONS),
        String(MAX_BYTES),
        String(SEED),
      ],
    );
    try {
      const line = await host.waitFor((l) => l.startsWith("result "), 600_000);
      const h = JSON.parse(line.slice(7));
      console.log(`host: ${JSON.stringify(h)}`);
      const g = JSON.parse((await (async () => {
        await guest.stop("SIGTERM");
        return guest.lines.find((l) => l.startsWith("result "))!;
      })()).slice(7));
      console.log(`guest: ${JSON.stringify(g)}`);
      assertEquals({ ok: h.ok, mismatched: h.mismatched, failed: h.failed }, {
        ok: CONNECTIONS,
        mismatched: 0,
        failed: 0,
      });
      assertEquals({ ok: g.ok, mismatched: g.mismatched, failed: g.failed }, {
        ok: CONNECTIONS,
        mismatched: 0,
        failed: 0,
      });
      assertEquals(
        (await host.exited(30_000)).code,
        0,
        "the host finishes and exits by itself",
      );
    } finally {
      await host.stop("SIGKILL");
      await guest.stop("SIGKILL");
      await Deno.remove(path).catch(() => {});
    }
  },
});
