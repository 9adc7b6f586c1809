/**
 * The OpenAPI 3.1 document of the admin API, generated from the same zod
 * schemas that validate the config file and the request bodies.
 *
 * @module
 */

import { z } from "../deps.ts";
import { Route } from "../config/schema.ts";

const Error = z.object({
  error: z.string(),
  problems: z.array(z.string()).optional(),
});
const ConnectionInfo = z.object({
  id: z.string(),
  route: z.string(),
  direction: z.enum(["host-to-guest", "guest-to-host", "websocket-to-guest"]),
  vsock: z.object({ localPort: z.number().int(), guestPort: z.number().int() }),
  remote: z.string(),
  state: z.enum(["connecting", "open", "closing", "closed"]),
  bytesToGuest: z.number().int(),
  bytesFromGuest: z.number().int(),
  ageMs: z.number().int(),
  lastActivity: z.string(),
});

let cached: Record<string, unknown> | null = null;

/** The document (built once). */
export function openApiDocument(): Record<string, unknown> {
  if (cached !== null) return cached;
  const schema = (s: z.ZodType, io: "input" | "output" = "output") =>
    z.toJSONSchema(s, { io, unrepresentable: "any" });
  const json = (ref: string, description: string) => ({
    description,
    content: {
      "application/json": { schema: { $ref: `#/components/schemas/${ref}` } },
    },
  });
  const error = (description: string) => json("Error", description);
  const nameParam = {
    name: "name",
    in: "path",
    required: true,
    schema: { type: "string" },
  };
  const idParam = {
    name: "id",
    in: "path",
    required: true,
    schema: { type: "string" },
  };
  cached = {
    openapi: "3.1.0",
    info: {
      title: "ivsock admin API",
      version: "1",
      description:
        "Routes between vsock ports and TCP/WebSocket, live connections, metrics and events of an ivsock sidecar.",
    },
    components: {
      schemas: {
        Route: schema(Route, "output"),
        RouteInput: schema(Route, "input"),
        ConnectionInfo: schema(ConnectionInfo),
        Error: schema(Error),
      },
      securitySchemes: { bearer: { type: "http", scheme: "bearer" } },
    },
    security: [{ bearer: [] }, {}],
    paths: {
      "/healthz": {
        get: {
          summary: "The process is alive",
          responses: { 200: { description: "alive" } },
        },
      },
      "/readyz": {
        get: {
          summary: "A guest driver is running",
          responses: {
            200: { description: "ready" },
            503: { description: "not ready, with the reason" },
          },
        },
      },
      "/v1/device": {
        get: {
          summary: "Device status, features, queues and generations",
          responses: { 200: { description: "the device" } },
        },
      },
      "/v1/routes": {
        get: {
          summary: "List routes",
          responses: { 200: { description: "routes" } },
        },
        post: {
          summary: "Create a route",
          requestBody: { required: true, ...json("RouteInput", "the route") },
          responses: {
            201: json("Route", "created"),
            400: error("invalid body"),
            409: error("name or listener taken"),
          },
        },
      },
      "/v1/routes/{name}": {
        parameters: [nameParam],
        get: {
          summary: "One route",
          responses: {
            200: json("Route", "the route"),
            404: error("no such route"),
          },
        },
        put: {
          summary:
            "Update a route: fields left out keep their values, the read-only fields GET adds are ignored (changing only `enabled` keeps its listener and connections)",
          requestBody: { required: true, ...json("RouteInput", "the route") },
          responses: {
            200: json("Route", "replaced"),
            400: error("invalid body"),
            404: error("no such route"),
            409: error("listener taken"),
          },
        },
        delete: {
          summary:
            "Remove a route; live connections continue unless drain=true",
          parameters: [{
            name: "drain",
            in: "query",
            schema: { type: "boolean" },
          }],
          responses: {
            204: { description: "removed" },
            404: error("no such route"),
          },
        },
      },
      "/v1/populate": {
        post: {
          summary: "Create or replace many routes by name (idempotent)",
          requestBody: {
            required: true,
            content: {
              "application/json": {
                schema: {
                  type: "array",
                  items: { $ref: "#/components/schemas/RouteInput" },
                },
              },
            },
          },
          responses: {
            200: { description: "what was created, replaced or unchanged" },
            400: error("invalid body"),
            409: error("conflict"),
          },
        },
      },
      "/v1/connections": {
        get: {
          summary: "Live connections",
          responses: {
            200: {
              description: "connections",
              content: {
                "application/json": {
                  schema: {
                    type: "array",
                    items: { $ref: "#/components/schemas/ConnectionInfo" },
                  },
                },
              },
            },
          },
        },
      },
      "/v1/connections/{id}": {
        parameters: [idParam],
        get: {
          summary: "One connection",
          responses: {
            200: json("ConnectionInfo", "the connection"),
            404: error("no such connection"),
          },
        },
        delete: {
          summary: "Close gracefully, or reset with reset=true",
          parameters: [{
            name: "reset",
            in: "query",
            schema: { type: "boolean" },
          }],
          responses: {
            204: { description: "closing" },
            404: error("no such connection"),
          },
        },
      },
      "/v1/events": {
        get: {
          summary:
            "Server-Sent Events: connect, close, deny, reset, route, device",
          responses: {
            200: {
              description: "an event stream",
              content: { "text/event-stream": {} },
            },
          },
        },
      },
      "/metrics": {
        get: {
          summary: "Prometheus text format",
          responses: {
            200: { description: "metrics", content: { "text/plain": {} } },
          },
        },
      },
      "/openapi.json": {
        get: {
          summary: "This document",
          responses: { 200: { description: "OpenAPI 3.1" } },
        },
      },
    },
  };
  return cached;
}
