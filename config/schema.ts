/**
 * The shapes of ivsock's configuration, as zod schemas: one source for the
 * config file, the admin API's bodies and its OpenAPI document. Every error
 * names the field path and says what was expected and what was received.
 *
 * @module
 */

import { z } from "../deps.ts";
import { DEFAULT_BUF_ALLOC } from "../device/vsock/constants.ts";

/** Largest vsock port; 0xffffffff is VMADDR_PORT_ANY. */
export const MAX_VSOCK_PORT = 0xfffffffe;

function received(input: unknown): string {
  return input === undefined ? "nothing" : JSON.stringify(input);
}

/** An integer in `[min, max]`, with one message for every way to miss. */
export function intIn(min: number, max: number) {
  const message = (iss: { input?: unknown }) =>
    `expected an integer from ${min} to ${max}, received ${
      received(iss.input)
    }`;
  return z.number({ error: message }).int({ error: message }).min(min, {
    error: message,
  })
    .max(max, { error: message });
}

const hostname = z.string({
  error: (iss) =>
    `expected a host name or IP address, received ${received(iss.input)}`,
}).superRefine((h, ctx) => {
  // One check, one message, whatever is wrong with it.
  const problem = h === ""
    ? "expected a host name or IP address, received an empty string"
    : h.length > 253
    ? `expected a host name of at most 253 characters, received ${h.length}`
    : /^[A-Za-z0-9.:\-_\[\]%]+$/.test(h)
    ? null
    : `expected a host name or IP address, received ${received(h)}`;
  if (problem !== null) {
    ctx.addIssue({ code: "custom", message: problem, input: h });
  }
});

/** A whole number of bytes, optionally with a binary unit (K, M, G, KiB, ...). */
const SIZE_TEXT = /^(\d+)\s*(?:(K|M|G)(?:i?B)?)?$/i;

/** Route and connection names: short, URL-safe. */
export const Name = z.string({
  error: (iss) => `expected a name, received ${received(iss.input)}`,
})
  .regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/, {
    error: (iss) =>
      `expected 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit, received ${
        received(iss.input)
      }`,
  });

const TcpListen = z.object({
  type: z.literal("tcp"),
  host: hostname.default("127.0.0.1"),
  /** 0 picks a free port (the API reports which). */
  port: intIn(0, 65535),
}).strict();

const WsListen = z.object({
  type: z.literal("ws"),
  host: hostname.default("127.0.0.1"),
  port: intIn(0, 65535),
  path: z.string().regex(/^\/[A-Za-z0-9._~\-\/]*$/, {
    error: (iss) =>
      `expected a URL path starting with "/", received ${received(iss.input)}`,
  }),
}).strict();

const VsockEnd = z.object({
  type: z.literal("vsock"),
  port: intIn(0, MAX_VSOCK_PORT),
  /** Socket type on the vsock side. */
  socket: z.enum(["stream", "seqpacket"]).default("stream"),
}).strict();

const TcpTarget = z.object({
  type: z.literal("tcp"),
  host: hostname,
  port: intIn(1, 65535),
}).strict();

const endType = (types: string[]) => ({
  error: (iss: { input?: unknown }) => {
    const t = (iss.input as { type?: unknown } | undefined)?.type;
    return `expected an object whose "type" is ${
      types.map((x) => `"${x}"`).join(" or ")
    }, received ${
      t === undefined ? received(iss.input) : `type ${received(t)}`
    }`;
  },
});

/** Per-route limits. */
export const Limits = z.object({
  /** Live connections beyond this are rejected, not queued. */
  maxConnections: intIn(1, 1_000_000).default(1024),
  /** Time to reach the target (vsock RESPONSE, or TCP connect). */
  connectTimeoutMs: intIn(1, 600_000).default(2000),
  /** Close a connection idle this long in both directions; 0 = never. */
  idleTimeoutMs: intIn(0, 86_400_000).default(0),
}).strict();

/** A named route: where connections come from and where they go. */
export const Route = z.object({
  name: Name,
  /** A disabled route accepts nothing new; live connections carry on. */
  enabled: z.boolean().default(true),
  from: z.discriminatedUnion(
    "type",
    [TcpListen, WsListen, VsockEnd],
    endType(["tcp", "ws", "vsock"]),
  ),
  to: z.discriminatedUnion(
    "type",
    [VsockEnd, TcpTarget],
    endType(["vsock", "tcp"]),
  ),
  limits: Limits.default({
    maxConnections: 1024,
    connectTimeoutMs: 2000,
    idleTimeoutMs: 0,
  }),
}).strict().superRefine((r, ctx) => {
  const want = r.from.type === "vsock" ? "tcp" : "vsock";
  if (r.to.type !== want) {
    ctx.addIssue({
      code: "custom",
      path: ["to", "type"],
      message: `a route from ${r.from.type} must go to ${want}, received ${
        received(r.to.type)
      }`,
      input: r.to.type,
    });
  }
  if (r.from.type === "vsock" && r.from.socket !== "stream") {
    ctx.addIssue({
      code: "custom",
      path: ["from", "socket"],
      message:
        `a guest-initiated route forwards to TCP, so its vsock side must be "stream", received ${
          received(r.from.socket)
        }`,
      input: r.from.socket,
    });
  }
  if (
    r.from.type === "tcp" && r.to.type === "vsock" && r.to.socket !== "stream"
  ) {
    ctx.addIssue({
      code: "custom",
      path: ["to", "socket"],
      message:
        `TCP carries a byte stream, so its vsock side must be "stream", received ${
          received(r.to.socket)
        }`,
      input: r.to.socket,
    });
  }
});

export type RouteSpec = z.output<typeof Route>;
export type RouteInput = z.input<typeof Route>;

/** Region sizes as a number of bytes or a string such as "4MiB" or "16M". */
export const Size = z.union([
  z.number(),
  z.string().regex(SIZE_TEXT, {
    error: (iss) =>
      `expected a size such as 4194304 or "4MiB", received ${
        received(iss.input)
      }`,
  }).transform((s) => parseSize(s)),
], {
  error: (iss) =>
    `expected a size such as 4194304 or "4MiB", received ${
      received(iss.input)
    }`,
}).superRefine((n, ctx) => {
  // Every way a number can miss (fraction, negative, too big, not a power
  // of two) gets the same single message.
  if (
    !Number.isInteger(n) || n < 256 * 1024 || n > 2 ** 31 || (n & (n - 1)) !== 0
  ) {
    ctx.addIssue({
      code: "custom",
      message: `expected a power of two from 256KiB to 2GiB, received ${n}`,
      input: n,
    });
  }
});

/**
 * "4MiB" -> 4194304. K, M and G are binary, as QEMU reads them; a number
 * alone is bytes.
 *
 * @throws {RangeError} for text that is not such a size.
 */
export function parseSize(s: string): number {
  const m = SIZE_TEXT.exec(s.trim());
  if (m === null) {
    throw new RangeError(
      `expected a size such as 4194304 or "4MiB", received ${
        JSON.stringify(s)
      }`,
    );
  }
  const unit = (m[2] ?? "").toUpperCase();
  return Number(m[1]) *
    (unit === "K" ? 1024 : unit === "M" ? 1 << 20 : unit === "G" ? 1 << 30 : 1);
}

/** The device: the shared region, the guest, and how they notify. */
export const Device = z.object({
  /** The ivshmem region file (a /dev/shm path), created if missing. */
  region: z.string().min(1, {
    error: "expected a file path, received an empty string",
  }),
  size: Size.default(4 << 20),
  guestCid: intIn(3, 0xfffffffe).default(3),
  /**
   * Serve QEMU's ivshmem server protocol here (ivshmem-doorbell); without
   * it the device polls (ivshmem-plain).
   */
  doorbell: z.object({
    socket: z.string().min(1),
    vectors: intIn(1, 64).default(2),
  }).strict().optional(),
  /**
   * Largest receive window per vsock connection (buf_alloc): windows start
   * at 256 KiB (or this, if smaller) and grow to it while the reader keeps
   * up (device/vsock/constants.ts).
   */
  bufAlloc: intIn(4096, 16 << 20).default(DEFAULT_BUF_ALLOC),
  /** Largest virtqueue the device accepts. */
  maxQueueSize: intIn(1, 32768).refine((n) => (n & (n - 1)) === 0, {
    error: (iss) => `expected a power of two, received ${received(iss.input)}`,
  }).default(1024),
  /** A guest whose heartbeat stops this long is presumed gone. */
  driverTimeoutMs: intIn(100, 600_000).default(3000),
}).strict();

const TOKEN_SOURCES = 'expected {"env": "VARIABLE"} or {"file": "/path"}';

/** Where the admin token comes from: one of the two keys, exactly. */
const TokenSource = z.unknown().transform((v, ctx) => {
  const keys = v !== null && typeof v === "object" && !Array.isArray(v)
    ? Object.keys(v)
    : null;
  if (
    keys === null || keys.length !== 1 ||
    (keys[0] !== "env" && keys[0] !== "file")
  ) {
    ctx.addIssue({
      code: "custom",
      message: `${TOKEN_SOURCES}, received ${received(v)}`,
      input: v,
    });
    return z.NEVER;
  }
  const value = (v as Record<string, unknown>)[keys[0]!];
  if (keys[0] === "env") {
    if (typeof value !== "string" || !/^[A-Za-z_][A-Za-z0-9_]*$/.test(value)) {
      ctx.addIssue({
        code: "custom",
        path: ["env"],
        message:
          `expected an environment variable name (letters, digits and _), received ${
            received(value)
          }`,
        input: value,
      });
      return z.NEVER;
    }
    return { env: value };
  }
  if (typeof value !== "string" || value === "") {
    ctx.addIssue({
      code: "custom",
      path: ["file"],
      message: `expected a file path, received ${received(value)}`,
      input: value,
    });
    return z.NEVER;
  }
  return { file: value };
});

/** The admin API listener. */
export const Admin = z.object({
  host: hostname.default("127.0.0.1"),
  port: intIn(0, 65535).default(8090),
  /** Where the bearer token comes from; required off loopback. */
  token: TokenSource.optional(),
}).strict();

/**
 * The `admin` setting: the listener, or false. Checked in two steps rather
 * than as a union, so that a mistake inside the object is reported at its
 * own path instead of as "invalid input" for the whole setting.
 */
const AdminSetting = z.unknown().optional().transform((v, ctx) => {
  if (v === false) return false as const;
  if (v === undefined) return { host: "127.0.0.1", port: 8090 };
  if (v === null || typeof v !== "object" || Array.isArray(v)) {
    ctx.addIssue({
      code: "custom",
      message: `expected an object or false, received ${received(v)}`,
      input: v,
    });
    return z.NEVER;
  }
  const r = Admin.safeParse(v, { reportInput: true });
  if (!r.success) {
    for (const issue of r.error.issues) {
      ctx.addIssue(
        { ...issue, code: "custom", message: describeIssue(issue) } as never,
      );
    }
    return z.NEVER;
  }
  return r.data;
});

/** The whole config file. */
export const Config = z.object({
  device: Device,
  routes: z.array(Route).default([]),
  /** false turns the admin API off. */
  admin: AdminSetting,
  log: z.object({
    format: z.enum(["text", "json"]).default("text"),
    level: z.enum(["debug", "info", "warn", "error"]).default("info"),
  }).strict().default({ format: "text", level: "info" }),
  /** On SIGINT/SIGTERM, open connections get this long to finish. */
  shutdownGraceMs: intIn(0, 600_000).default(5000),
}).strict().superRefine((c, ctx) => {
  for (const issue of routeConflicts(c.routes)) {
    ctx.addIssue({
      code: "custom",
      path: ["routes", ...issue.path],
      message: issue.message,
      input: issue.input,
    });
  }
});

export type ConfigSpec = z.output<typeof Config>;

/** Names used twice, and listeners that cannot coexist. */
export function routeConflicts(
  routes: readonly RouteSpec[],
): Array<{ path: (string | number)[]; message: string; input: unknown }> {
  const out: Array<
    { path: (string | number)[]; message: string; input: unknown }
  > = [];
  const names = new Map<string, number>();
  const listens = new Map<string, { index: number; type: string }>();
  routes.forEach((r, i) => {
    const first = names.get(r.name);
    if (first !== undefined) {
      out.push({
        path: [i, "name"],
        message: `"${r.name}" is already the name of routes[${first}]`,
        input: r.name,
      });
    } else names.set(r.name, i);
    const key = r.from.type === "vsock"
      ? `vsock:${r.from.port}`
      : `${r.from.host}:${r.from.port}`;
    if (r.from.type !== "vsock" && r.from.port === 0) return; // each gets its own free port
    const other = listens.get(key);
    const wsShare = other?.type === "ws" && r.from.type === "ws";
    if (other !== undefined && !wsShare) {
      out.push({
        path: [i, "from"],
        message: `${key} is already taken by routes[${other.index}]`,
        input: r.from,
      });
    } else if (other === undefined) {
      listens.set(key, { index: i, type: r.from.type });
    }
    if (wsShare && r.from.type === "ws") {
      const dup = routes.findIndex((x, j) =>
        j < i && x.from.type === "ws" &&
        `${x.from.host}:${x.from.port}` === key &&
        x.from.path === (r.from as { path: string }).path
      );
      if (dup >= 0) {
        out.push({
          path: [i, "from", "path"],
          message: `${key}${r.from.path} is already taken by routes[${dup}]`,
          input: r.from.path,
        });
      }
    }
  });
  return out;
}

/**
 * Renders zod issues as `path: message` lines, rewording zod's generic
 * messages into "expected ..., received ..." like the schema's own.
 */
export function formatIssues(error: z.ZodError): string[] {
  return error.issues.map((i) => `${formatPath(i.path)}: ${describeIssue(i)}`);
}

function describeIssue(i: z.core.$ZodIssue): string {
  switch (i.code) {
    case "unrecognized_keys":
      return `unknown field${i.keys.length > 1 ? "s" : ""} ${
        i.keys.map((k) => `"${k}"`).join(", ")
      }`;
    case "invalid_type":
      if (i.input === undefined) {
        return `required, expected ${article(i.expected)}`;
      }
      if (i.message.startsWith("Invalid input")) {
        return `expected ${article(i.expected)}, received ${
          describeValue(i.input)
        }`;
      }
      return i.message;
    case "invalid_value":
      return `expected one of ${
        i.values.map((v) => JSON.stringify(v)).join(", ")
      }, received ${describeValue(i.input)}`;
    case "too_small":
      if (i.origin === "string" && i.message.startsWith("Too small")) {
        return `expected a non-empty string, received ${
          describeValue(i.input)
        }`;
      }
      return i.message;
    default:
      return i.message;
  }
}

function article(type: string): string {
  return /^[aeio]/.test(type) ? `an ${type}` : `a ${type}`;
}

function describeValue(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "an array";
  if (typeof v === "object") return "an object";
  return JSON.stringify(v);
}

/** `["routes", 2, "to", "port"]` -> `routes[2].to.port`. */
export function formatPath(path: readonly PropertyKey[]): string {
  let out = "";
  for (const p of path) {
    if (typeof p === "number") out += `[${p}]`;
    else out += out === "" ? String(p) : `.${String(p)}`;
  }
  return out === "" ? "(top level)" : out;
}
