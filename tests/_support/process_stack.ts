/**
 * The whole product as separate processes, for fault tests and the soak: the sidecar
 * (`mod.ts serve --config`) and the guest agent (`mod.ts guest --region`)
 * as children, on fixed loopback ports so that either can be killed and
 * started again on the same config. The test runs the services on both ends
 * itself (the guest's exposed service and the host's TCP target, both on
 * loopback) so it sees every connection end.
 *
 * Every wait is bounded; `close()` kills what is left, removes the region
 * file (a sidecar started over an existing file does not remove it) and the
 * config directory.
 *
 * @module
 */

import { Child } from "./child.ts";

export { within } from "./within.ts";

const MOD = new URL("../../mod.ts", import.meta.url);

let counter = 0;

/** What the stack runs. */
export interface StackOptions {
  /** Routes, as in the config file. */
  routes: unknown[];
  /** `--expose` values for the guest agent. */
  exposes?: string[];
  /** `--forward` values for the guest agent. */
  forwards?: string[];
  /** The device's `driverTimeoutMs`. @default {1000} */
  driverTimeoutMs?: number;
  /** `shutdownGraceMs`. @default {200} */
  shutdownGraceMs?: number;
}

/** An admin API answer; the body is whatever JSON came back. */
export interface AdminAnswer {
  status: number;
  // deno-lint-ignore no-explicit-any
  body: any;
}

/** A sidecar and a guest agent process over one region. */
export class Stack {
  readonly dir: string;
  readonly region: string;
  readonly configPath: string;
  readonly adminUrl: string;
  serve: Child | null = null;
  guest: Child | null = null;
  #guestArgs: string[];
  /** Every child started, so close() reaps them all. */
  #children: Child[] = [];

  private constructor(
    dir: string,
    region: string,
    adminPort: number,
    guestArgs: string[],
  ) {
    this.dir = dir;
    this.region = region;
    this.configPath = `${dir}/ivsock.json`;
    this.adminUrl = `http://127.0.0.1:${adminPort}`;
    this.#guestArgs = guestArgs;
  }

  /** Writes the config; starts nothing yet. */
  static async create(o: StackOptions): Promise<Stack> {
    const dir = await Deno.makeTempDir({ prefix: "ivsock-stack-" });
    const region = `/dev/shm/ivsock-test-stack-${Deno.pid}-${counter++}`;
    const adminPort = freePort();
    const guestArgs = ["--region", region];
    for (const e of o.exposes ?? []) guestArgs.push("--expose", e);
    for (const f of o.forwards ?? []) guestArgs.push("--forward", f);
    const stack = new Stack(dir, region, adminPort, guestArgs);
    await Deno.writeTextFile(
      stack.configPath,
      JSON.stringify({
        device: {
          region,
          size: "4MiB",
          driverTimeoutMs: o.driverTimeoutMs ?? 1000,
        },
        routes: o.routes,
        admin: { host: "127.0.0.1", port: adminPort },
        shutdownGraceMs: o.shutdownGraceMs ?? 200,
      }),
    );
    return stack;
  }

  /** Starts `serve` and waits for its admin API. */
  async startServe(): Promise<Child> {
    const c = new Child(
      "serve",
      MOD,
      ["serve", "--config", this.configPath],
      {},
      "stderr",
    );
    this.#children.push(c);
    this.serve = c;
    await c.waitFor((l) => l.includes("admin API on"), 30_000);
    return c;
  }

  /**
   * Starts the guest agent and waits until its mappings are open and its
   * transport runs.
   */
  async startGuest(): Promise<Child> {
    const c = new Child(
      "guest",
      MOD,
      ["guest", ...this.#guestArgs],
      {},
      "stderr",
    );
    this.#children.push(c);
    this.guest = c;
    await c.waitFor((l) => l.includes("guest agent started"), 30_000);
    await c.waitFor((l) => l.includes("transport running"), 30_000);
    return c;
  }

  /** GET `path` on the admin API: status and parsed JSON body. */
  async admin(path: string): Promise<AdminAnswer> {
    const r = await fetch(`${this.adminUrl}${path}`, {
      signal: AbortSignal.timeout(5000),
    });
    return { status: r.status, body: await r.json() };
  }

  /** Waits until `/readyz` answers `status` (200 or 503). */
  async waitReadyz(
    status: number,
    timeoutMs = 15_000,
  ): Promise<AdminAnswer["body"]> {
    let last: AdminAnswer | null = null;
    await waitUntil(
      async () => {
        last = await this.admin("/readyz").catch(() => null);
        return last?.status === status;
      },
      timeoutMs,
      () => `/readyz to answer ${status}; last: ${JSON.stringify(last)}`,
    );
    return last!.body;
  }

  /** Waits until the sidecar lists no connection. */
  async waitNoConnections(timeoutMs = 10_000): Promise<void> {
    let last: unknown = null;
    await waitUntil(
      async () => {
        const r = await this.admin("/v1/connections");
        last = r.body;
        return Array.isArray(r.body) && r.body.length === 0;
      },
      timeoutMs,
      () => `no connections; last: ${JSON.stringify(last)}`,
    );
  }

  /** Kills every child still running, removes the region and the directory. */
  async close(): Promise<void> {
    for (const c of this.#children) await c.stop("SIGKILL");
    await Deno.remove(this.region).catch(() => {});
    await Deno.remove(this.dir, { recursive: true }).catch(() => {});
  }
}

/** Ports already handed out by this process: never the same one twice. */
const handedOut = new Set<number>();

/**
 * A loopback port free right now (bound, read, released), and not one this
 * process handed out before (the kernel may offer a released port again at
 * once, and two listeners of one stack would then collide).
 */
export function freePort(): number {
  for (;;) {
    const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const port = (l.addr as Deno.NetAddr).port;
    l.close();
    if (!handedOut.has(port)) {
      handedOut.add(port);
      return port;
    }
  }
}

/** Polls `cond` every 20 ms; rejects with `what()` after `timeoutMs`. */
export async function waitUntil(
  cond: () => boolean | Promise<boolean>,
  timeoutMs: number,
  what: () => string = () => "condition",
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what()}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
}
