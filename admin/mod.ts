/**
 * The admin API of a sidecar: a Hono app and its listener.
 *
 * @module
 */

export * from "./app.ts";
export * from "./auth.ts";
export * from "./device_info.ts";
export * from "./metrics.ts";
export * from "./openapi.ts";
export * from "./server.ts";
