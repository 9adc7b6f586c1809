/**
 * The admin API: a Hono app over a running sidecar. Every body is validated
 * with the same zod schemas as the config file; errors are JSON with the
 * field paths; unknown paths are 404 and known paths with the wrong method
 * 405, both JSON.
 *
 * ```text
 * GET    /healthz                      process alive
 * GET    /readyz                       200 when a guest driver is running, else 503 with the reason;
 *                                      a removed region file is reported either way
 * GET    /v1/device                    status, features, CID, queues, notification mode, generations
 * GET    /v1/routes                    every route with where it listens and its counters
 * POST   /v1/routes                    create (409 if the name or listener is taken)
 * GET    /v1/routes/{name}
 * PUT    /v1/routes/{name}             replace; only `enabled` changed = enable/disable in place
 * DELETE /v1/routes/{name}?drain=true  stop accepting; drain closes live connections gracefully
 * POST   /v1/populate                  create-or-replace many, idempotent
 * GET    /v1/connections
 * GET    /v1/connections/{id}
 * DELETE /v1/connections/{id}?reset=true  graceful close, or RST
 * GET    /v1/events                    Server-Sent Events
 * GET    /metrics                      Prometheus text
 * GET    /openapi.json
 * ```
 *
 * @module
 */

import { bodyLimit, type Context, Hono, streamSSE, z } from "../deps.ts";
import { formatIssues, Route, type RouteSpec } from "../config/schema.ts";
import type { ProxyEvent } from "../proxy/events.ts";
import { RouteError } from "../proxy/route_table.ts";
import type { RouteRuntime } from "../proxy/route_runtime.ts";
import type { Sidecar } from "../proxy/sidecar.ts";
import { requireToken } from "./auth.ts";
import { deviceInfo } from "./device_info.ts";
import { renderMetrics } from "./metrics.ts";
import { openApiDocument } from "./openapi.ts";

/** Options of {@linkcode adminApp}. */
export interface AdminAppOptions {
  /** Require this bearer token on every request. */
  token?: string | null;
  /** Largest request body accepted. @default {1 MiB} */
  maxBodyBytes?: number;
  /** Interval of SSE keep-alive comments. @default {15000} */
  keepAliveMs?: number;
}

/** Paths the API serves and the methods each accepts (for 405 answers). */
const PATHS: Array<[RegExp, string[]]> = [
  [/^\/healthz$/, ["GET"]],
  [/^\/readyz$/, ["GET"]],
  [/^\/metrics$/, ["GET"]],
  [/^\/openapi\.json$/, ["GET"]],
  [/^\/v1\/device$/, ["GET"]],
  [/^\/v1\/routes$/, ["GET", "POST"]],
  [/^\/v1\/routes\/[^/]+$/, ["GET", "PUT", "DELETE"]],
  [/^\/v1\/populate$/, ["POST"]],
  [/^\/v1\/connections$/, ["GET"]],
  [/^\/v1\/connections\/[^/]+$/, ["GET", "DELETE"]],
  [/^\/v1\/events$/, ["GET"]],
];

/** The route as the API shows it. */
export function routeView(r: RouteRuntime) {
  const bytes = r.bytes();
  return {
    ...r.spec,
    enabled: r.enabled,
    listening: r.listening,
    connections: r.connections.size,
    stats: {
      ...r.stats,
      bytesToGuest: bytes.toGuest,
      bytesFromGuest: bytes.fromGuest,
    },
  };
}

/** Builds the admin app for `sidecar`. */
export function adminApp(
  sidecar: Sidecar,
  options: AdminAppOptions = {},
): Hono {
  const app = new Hono();
  const maxBody = options.maxBodyBytes ?? 1 << 20;
  const keepAliveMs = options.keepAliveMs ?? 15_000;

  app.onError((err, c) => {
    if (err instanceof RouteError) {
      return c.json(
        { error: err.message },
        err.kind === "not-found" ? 404 : 409,
      );
    }
    return c.json({
      error: `internal error: ${err instanceof Error ? err.message : err}`,
    }, 500);
  });
  app.notFound((c) => {
    const path = c.req.path;
    const known = PATHS.find(([re]) => re.test(path));
    if (known !== undefined) {
      c.header("allow", known[1].join(", "));
      return c.json({
        error: `method ${c.req.method} is not allowed on ${path}`,
        allow: known[1],
      }, 405);
    }
    return c.json({ error: `no such endpoint: ${c.req.method} ${path}` }, 404);
  });
  if (options.token) app.use("*", requireToken(options.token));
  app.use(
    "*",
    bodyLimit({
      maxSize: maxBody,
      onError: (c) =>
        c.json({ error: `request body larger than ${maxBody} bytes` }, 413),
    }),
  );

  app.get(
    "/healthz",
    (c) => c.json({ status: "ok", uptimeMs: Date.now() - sidecar.startedAt }),
  );

  app.get("/readyz", (c) => {
    const t = sidecar.transport;
    // A removed region file does not stop the guest already attached (it
    // keeps the mapping), so it does not make a running sidecar unready; it
    // is reported, since no new guest can attach until a restart.
    const region = sidecar.regionFile;
    const lost = region === "present"
      ? null
      : `the region file ${sidecar.regionPath} was ${region}: no new guest can attach until ivsock restarts`;
    if (t.state === "running" && sidecar.engine.active) {
      return c.json(
        lost === null
          ? { status: "ready" }
          : { status: "ready", region, warning: lost },
      );
    }
    const reason = t.state === "waiting"
      ? "no guest driver has reached DRIVER_OK"
      : t.state === "needs-reset"
      ? `the device needs a reset: ${t.reason}`
      : t.state === "failed"
      ? "the guest driver marked the device FAILED"
      : "the guest is not connected";
    return c.json(
      lost === null ? { status: "not-ready", state: t.state, reason } : {
        status: "not-ready",
        state: t.state,
        reason: `${reason}; ${lost}`,
        region,
      },
      503,
    );
  });

  app.get("/v1/device", (c) => c.json(deviceInfo(sidecar)));

  app.get("/v1/routes", (c) => c.json(sidecar.routes.list().map(routeView)));

  app.post("/v1/routes", async (c) => {
    const spec = await parseBody(c, Route);
    if (spec instanceof Response) return spec;
    const route = await sidecar.routes.add(spec);
    return c.json(routeView(route), 201);
  });

  app.get("/v1/routes/:name", (c) => {
    const route = sidecar.routes.get(c.req.param("name"));
    return route === undefined
      ? notFound(c, "route", c.req.param("name"))
      : c.json(routeView(route));
  });

  app.put("/v1/routes/:name", async (c) => {
    const name = c.req.param("name");
    const current = sidecar.routes.get(name);
    if (current === undefined) return notFound(c, "route", name);
    const raw = await readJson(c);
    if (raw instanceof Response) return raw;
    if (raw === null || typeof raw !== "object" || Array.isArray(raw)) {
      return c.json({
        error: "invalid body",
        problems: ["(body): expected a JSON object"],
      }, 400);
    }
    // Fields left out keep their current values (so {"enabled": false}
    // alone disables the route), and the read-only fields GET adds are
    // ignored, so a route fetched with GET can be sent back as it is.
    const { listening: _l, connections: _c, stats: _s, ...fields } =
      raw as Record<string, unknown>;
    const spec = validate(c, Route, { ...current.spec, ...fields });
    if (spec instanceof Response) return spec;
    if (spec.name !== name) {
      return c.json({
        error: "invalid body",
        problems: [
          `name: must be "${name}" as in the URL, received "${spec.name}"`,
        ],
      }, 400);
    }
    if (sameExceptEnabled(current.spec, spec)) {
      // Enabling or disabling keeps the listener and every live connection.
      return c.json(routeView(sidecar.routes.setEnabled(name, spec.enabled)));
    }
    return c.json(routeView(await sidecar.routes.replace(name, spec)));
  });

  app.delete("/v1/routes/:name", async (c) => {
    const name = c.req.param("name");
    if (sidecar.routes.get(name) === undefined) {
      return notFound(c, "route", name);
    }
    const drain = booleanQuery(c, "drain");
    if (drain instanceof Response) return drain;
    await sidecar.routes.remove(name, { drain });
    return c.body(null, 204);
  });

  app.post("/v1/populate", async (c) => {
    const raw = await readJson(c);
    if (raw instanceof Response) return raw;
    const list = Array.isArray(raw)
      ? raw
      : (raw as { routes?: unknown } | null)?.routes;
    const specs = validate(c, z.array(Route), list);
    if (specs instanceof Response) return specs;
    const seen = new Map<string, number>();
    for (const [i, s] of specs.entries()) {
      const first = seen.get(s.name);
      if (first !== undefined) {
        return c.json({
          error: "invalid body",
          problems: [`[${i}].name: "${s.name}" is also the name of [${first}]`],
        }, 400);
      }
      seen.set(s.name, i);
    }
    const result = await sidecar.routes.populate(specs);
    return c.json({ ...result, routes: sidecar.routes.list().map(routeView) });
  });

  app.get(
    "/v1/connections",
    (c) => c.json(sidecar.routes.connections().map((pc) => pc.info())),
  );

  app.get("/v1/connections/:id", (c) => {
    const pc = sidecar.routes.connection(c.req.param("id"));
    return pc === undefined
      ? notFound(c, "connection", c.req.param("id"))
      : c.json(pc.info());
  });

  app.delete("/v1/connections/:id", (c) => {
    const pc = sidecar.routes.connection(c.req.param("id"));
    if (pc === undefined) return notFound(c, "connection", c.req.param("id"));
    const reset = booleanQuery(c, "reset");
    if (reset instanceof Response) return reset;
    if (reset) pc.reset();
    else pc.close();
    return c.body(null, 204);
  });

  app.get("/v1/events", (c) =>
    streamSSE(c, async (stream) => {
      let id = 0;
      const queue: ProxyEvent[] = [];
      let wake: (() => void) | null = null;
      const unsubscribe = sidecar.events.subscribe((e) => {
        queue.push(e);
        wake?.();
      });
      stream.onAbort(() => {
        unsubscribe();
        wake?.();
      });
      try {
        // A first comment tells the client the stream is live.
        await stream.write(": ivsock events\n\n");
        while (!stream.aborted && !stream.closed) {
          const e = queue.shift();
          if (e !== undefined) {
            await stream.writeSSE({
              event: e.type,
              id: String(++id),
              data: JSON.stringify(e),
            });
            continue;
          }
          let timer: ReturnType<typeof setTimeout> | undefined;
          await new Promise<void>((resolve) => {
            wake = resolve;
            timer = setTimeout(resolve, keepAliveMs);
          });
          clearTimeout(timer);
          wake = null;
          if (queue.length === 0 && !stream.aborted) {
            await stream.write(": keep-alive\n\n");
          }
        }
      } finally {
        unsubscribe();
      }
    }));

  app.get("/metrics", (c) => {
    c.header("content-type", "text/plain; version=0.0.4; charset=utf-8");
    return c.body(renderMetrics(sidecar));
  });

  app.get("/openapi.json", (c) => c.json(openApiDocument()));

  return app;
}

/** A boolean query parameter: true/1, false/0, or absent (false); else 400. */
function booleanQuery(c: Context, name: string): boolean | Response {
  const v = c.req.query(name);
  if (v === undefined || v === "false" || v === "0") return false;
  if (v === "true" || v === "1") return true;
  return c.json({
    error: "invalid query",
    problems: [
      `${name}: expected true or false, received ${JSON.stringify(v)}`,
    ],
  }, 400);
}

/** Reads a JSON body; a 400 Response when it is not JSON. */
async function readJson(c: Context): Promise<unknown> {
  try {
    return await c.req.json();
  } catch (err) {
    return c.json({
      error: "invalid body",
      problems: [
        `(body): not valid JSON: ${err instanceof Error ? err.message : err}`,
      ],
    }, 400);
  }
}

function validate<T extends z.ZodType>(
  c: Context,
  schema: T,
  value: unknown,
): z.output<T> | Response {
  const r = schema.safeParse(value, { reportInput: true });
  if (r.success) return r.data;
  return c.json(
    { error: "invalid body", problems: formatIssues(r.error) },
    400,
  );
}

async function parseBody<T extends z.ZodType>(
  c: Context,
  schema: T,
): Promise<z.output<T> | Response> {
  const raw = await readJson(c);
  if (raw instanceof Response) return raw;
  return validate(c, schema, raw);
}

function notFound(c: Context, what: string, name: string): Response {
  return c.json({ error: `no ${what} named "${name}"` }, 404);
}

function sameExceptEnabled(a: RouteSpec, b: RouteSpec): boolean {
  return JSON.stringify({ ...a, enabled: true }) ===
    JSON.stringify({ ...b, enabled: true });
}
