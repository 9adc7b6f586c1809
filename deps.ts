/**
 * Third-party packages and standard-library stand-ins, re-exported by bare
 * name. Versions live only in `deno.json` `imports`. The device layer
 * (`device/`) never imports this file: it uses no third-party code.
 *
 * When JSR is reachable, the `node:` stand-ins below can move to `@std`
 * here without touching any other file.
 *
 * @module
 */

// hono: the admin API and the WebSocket data plane.
export { Hono } from "hono";
export type { Context, MiddlewareHandler } from "hono";
export { upgradeWebSocket } from "hono/deno";
export { streamSSE } from "hono/streaming";
export { HTTPException } from "hono/http-exception";
export { bodyLimit } from "hono/body-limit";

// zod: config file and API schemas.
export { z } from "zod";

// std stand-ins (@std/cli parseArgs, @std/async delay, @std/crypto
// timingSafeEqual), and the system resolver (getaddrinfo, which reads
// /etc/hosts as Deno.connect does) for the data plane's own sockets.
export { parseArgs } from "node:util";
export { setTimeout as delay } from "node:timers/promises";
export { timingSafeEqual } from "node:crypto";
export { lookup } from "node:dns/promises";
