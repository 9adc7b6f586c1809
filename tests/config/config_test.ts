/**
 * Every way a config can be wrong, as a user reads it: one `path: message`
 * line per problem, saying what was expected and what was received. Also
 * the defaults a valid config is filled in with, and the file-level errors
 * of `loadConfig`.
 */
import {
  assert,
  assertEquals,
  assertMatch,
  assertRejects,
  assertThrows,
} from "../../dev_deps.ts";
import { ConfigError, loadConfig, parseConfig } from "../../config/load.ts";
import {
  formatPath,
  parseSize,
  routeConflicts,
  type RouteSpec,
} from "../../config/schema.ts";

const REGION = "/dev/shm/ivsock-config-test";

/** A valid host-initiated route, to vary one field at a time. */
const WEB = {
  name: "web",
  from: { type: "tcp", port: 8080 },
  to: { type: "vsock", port: 80 },
};

/** A valid guest-initiated route. */
const OUT = {
  name: "out",
  from: { type: "vsock", port: 9000 },
  to: { type: "tcp", host: "127.0.0.1", port: 5432 },
};

function withDevice(device: Record<string, unknown>) {
  return { device: { region: REGION, ...device } };
}

function withRoutes(...routes: unknown[]) {
  return { device: { region: REGION }, routes };
}

function withTop(fields: Record<string, unknown>) {
  return { device: { region: REGION }, ...fields };
}

/** The problems `parseConfig` reports for `value`; fails if it accepts it. */
function problemsOf(value: unknown): string[] {
  const err = assertThrows(() => parseConfig(value, "c.json"), ConfigError);
  return err.problems;
}

/** Every config the tests below reject, for the line-format check. */
const REJECTED: Array<{ what: string; value: unknown }> = [];

/**
 * Registers a test that `value` is rejected with exactly `expected` (a
 * string is compared exactly, a RegExp must match the whole line).
 */
function rejects(
  name: string,
  value: unknown,
  expected: Array<string | RegExp>,
): void {
  REJECTED.push({ what: name, value });
  Deno.test(name, () => {
    const problems = problemsOf(value);
    const shown = `problems were:\n  ${problems.join("\n  ")}`;
    assertEquals(
      problems.length,
      expected.length,
      `expected ${expected.length} problem line(s); ${shown}`,
    );
    expected.forEach((want, i) => {
      if (typeof want === "string") assertEquals(problems[i], want, shown);
      else assertMatch(problems[i]!, want, shown);
    });
  });
}

/** Registers a test that each of `values` is accepted. */
function accepts(name: string, ...values: unknown[]): void {
  Deno.test(name, () => {
    for (const v of values) parseConfig(v, "c.json");
  });
}

// --- device ---------------------------------------------------------------

rejects("parseConfig requires a device section", {}, [
  "device: required, expected an object",
]);
rejects("parseConfig requires device.region", { device: {} }, [
  "device.region: required, expected a string",
]);
rejects("parseConfig rejects an empty device.region", {
  device: { region: "" },
}, ["device.region: expected a file path, received an empty string"]);
rejects("parseConfig rejects a device.region that is not a string", {
  device: { region: 5 },
}, ["device.region: expected a string, received 5"]);
rejects(
  "parseConfig rejects unknown fields in device",
  withDevice({
    sise: 1,
  }),
  ['device: unknown field "sise"'],
);

rejects(
  "parseConfig rejects a device.size that is not a power of two",
  withDevice({ size: 3 << 20 }),
  ["device.size: expected a power of two from 256KiB to 2GiB, received 3145728"],
);
rejects(
  "parseConfig rejects a device.size string that is not a power of two",
  withDevice({ size: "3MiB" }),
  ["device.size: expected a power of two from 256KiB to 2GiB, received 3145728"],
);
rejects(
  "parseConfig rejects a device.size below 256KiB",
  withDevice({ size: 131072 }),
  ["device.size: expected a power of two from 256KiB to 2GiB, received 131072"],
);
rejects(
  "parseConfig rejects a device.size above 2GiB with one line",
  withDevice({ size: 2 ** 32 }),
  [
    "device.size: expected a power of two from 256KiB to 2GiB, received 4294967296",
  ],
);
rejects(
  "parseConfig rejects a negative device.size with one line",
  withDevice({ size: -1 }),
  ["device.size: expected a power of two from 256KiB to 2GiB, received -1"],
);
rejects(
  "parseConfig rejects a device.size string it cannot read",
  withDevice({ size: "lots" }),
  ['device.size: expected a size such as 4194304 or "4MiB", received "lots"'],
);
rejects(
  "parseConfig rejects a device.size with a unit larger than G",
  withDevice({ size: "1TiB" }),
  ['device.size: expected a size such as 4194304 or "4MiB", received "1TiB"'],
);
rejects(
  "parseConfig rejects a fractional device.size",
  withDevice({ size: 262144.5 }),
  [
    "device.size: expected a power of two from 256KiB to 2GiB, received 262144.5",
  ],
);
rejects(
  "parseConfig rejects a device.size that is neither a number nor a string",
  withDevice({ size: true }),
  ['device.size: expected a size such as 4194304 or "4MiB", received true'],
);

Deno.test("parseConfig reads device.size as bytes or as a binary size string", () => {
  const size = (s: unknown) => parseConfig(withDevice({ size: s })).device.size;
  assertEquals(size("4MiB"), 4 << 20);
  assertEquals(size("16M"), 16 << 20);
  assertEquals(size("256KiB"), 262144);
  assertEquals(size("2GiB"), 2 ** 31);
  assertEquals(size(262144), 262144);
  assertEquals(size(2 ** 31), 2 ** 31);
});

for (const cid of [0, 1, 2]) {
  rejects(
    `parseConfig rejects device.guestCid ${cid}, which is reserved`,
    withDevice({ guestCid: cid }),
    [
      `device.guestCid: expected an integer from 3 to 4294967294, received ${cid}`,
    ],
  );
}
rejects(
  "parseConfig rejects device.guestCid 0xffffffff (VMADDR_CID_ANY)",
  withDevice({ guestCid: 0xffffffff }),
  [
    "device.guestCid: expected an integer from 3 to 4294967294, received 4294967295",
  ],
);
rejects(
  "parseConfig rejects a fractional device.guestCid",
  withDevice({ guestCid: 3.5 }),
  ["device.guestCid: expected an integer from 3 to 4294967294, received 3.5"],
);
rejects(
  "parseConfig rejects a device.guestCid given as a string",
  withDevice({ guestCid: "3" }),
  ['device.guestCid: expected an integer from 3 to 4294967294, received "3"'],
);
accepts(
  "parseConfig accepts device.guestCid from 3 to 0xfffffffe",
  withDevice({ guestCid: 3 }),
  withDevice({ guestCid: 0xfffffffe }),
);

rejects(
  "parseConfig rejects an empty device.doorbell.socket",
  withDevice({ doorbell: { socket: "" } }),
  ['device.doorbell.socket: expected a non-empty string, received ""'],
);
rejects(
  "parseConfig requires device.doorbell.socket when doorbell is given",
  withDevice({ doorbell: {} }),
  ["device.doorbell.socket: required, expected a string"],
);
rejects(
  "parseConfig rejects 0 doorbell vectors",
  withDevice({ doorbell: { socket: "/tmp/s", vectors: 0 } }),
  ["device.doorbell.vectors: expected an integer from 1 to 64, received 0"],
);
rejects(
  "parseConfig rejects 65 doorbell vectors",
  withDevice({ doorbell: { socket: "/tmp/s", vectors: 65 } }),
  ["device.doorbell.vectors: expected an integer from 1 to 64, received 65"],
);
rejects(
  "parseConfig rejects unknown fields in device.doorbell",
  withDevice({ doorbell: { socket: "/tmp/s", vector: 2 } }),
  ['device.doorbell: unknown field "vector"'],
);

rejects(
  "parseConfig rejects a device.bufAlloc below 4096",
  withDevice({ bufAlloc: 4095 }),
  [
    "device.bufAlloc: expected an integer from 4096 to 16777216, received 4095",
  ],
);
rejects(
  "parseConfig rejects a device.bufAlloc above 16MiB",
  withDevice({ bufAlloc: (16 << 20) + 1 }),
  [
    "device.bufAlloc: expected an integer from 4096 to 16777216, received 16777217",
  ],
);
rejects(
  "parseConfig rejects a device.maxQueueSize of 0",
  withDevice({ maxQueueSize: 0 }),
  ["device.maxQueueSize: expected an integer from 1 to 32768, received 0"],
);
rejects(
  "parseConfig rejects a device.maxQueueSize above 32768",
  withDevice({ maxQueueSize: 65536 }),
  ["device.maxQueueSize: expected an integer from 1 to 32768, received 65536"],
);
rejects(
  "parseConfig rejects a device.maxQueueSize that is not a power of two",
  withDevice({ maxQueueSize: 100 }),
  ["device.maxQueueSize: expected a power of two, received 100"],
);
rejects(
  "parseConfig rejects a device.driverTimeoutMs below 100",
  withDevice({ driverTimeoutMs: 99 }),
  [
    "device.driverTimeoutMs: expected an integer from 100 to 600000, received 99",
  ],
);
accepts(
  "parseConfig accepts the bounds of bufAlloc and maxQueueSize",
  withDevice({ bufAlloc: 4096, maxQueueSize: 1 }),
  withDevice({ bufAlloc: 16 << 20, maxQueueSize: 32768 }),
);

// --- routes ---------------------------------------------------------------

rejects(
  "parseConfig rejects a route name with a space",
  withRoutes({ ...WEB, name: "my web" }),
  [
    `routes[0].name: expected 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit, received "my web"`,
  ],
);
rejects(
  "parseConfig rejects a route name that starts with '-'",
  withRoutes({ ...WEB, name: "-web" }),
  [
    `routes[0].name: expected 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit, received "-web"`,
  ],
);
rejects(
  "parseConfig rejects a route name of 64 characters",
  withRoutes({ ...WEB, name: "a".repeat(64) }),
  [
    `routes[0].name: expected 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit, received "${
      "a".repeat(64)
    }"`,
  ],
);
rejects(
  "parseConfig rejects an empty route name",
  withRoutes({ ...WEB, name: "" }),
  [
    `routes[0].name: expected 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit, received ""`,
  ],
);
rejects(
  "parseConfig requires a route name",
  withRoutes({ from: WEB.from, to: WEB.to }),
  ["routes[0].name: required, expected a string"],
);
accepts(
  "parseConfig accepts a route name of 63 letters, digits, '.', '_' and '-'",
  withRoutes({ ...WEB, name: "a".repeat(60) + "._-" }),
  withRoutes({ ...WEB, name: "0" }),
);
rejects(
  "parseConfig rejects unknown route fields",
  withRoutes({ ...WEB, colour: "red" }),
  ['routes[0]: unknown field "colour"'],
);
rejects(
  "parseConfig rejects a route that is not an object",
  withRoutes(null),
  ["routes[0]: expected an object, received null"],
);
rejects(
  "parseConfig rejects routes that are not an array",
  withTop({ routes: {} }),
  ["routes: expected an array, received an object"],
);
rejects(
  "parseConfig rejects a route whose from.type is udp",
  withRoutes({ ...WEB, from: { type: "udp", port: 53 } }),
  [
    'routes[0].from.type: expected an object whose "type" is "tcp" or "ws" or "vsock", received type "udp"',
  ],
);
rejects(
  "parseConfig rejects a route whose from is a string",
  withRoutes({ ...WEB, from: "tcp" }),
  [
    'routes[0].from: expected an object whose "type" is "tcp" or "ws" or "vsock", received "tcp"',
  ],
);
rejects(
  "parseConfig requires a route's from",
  withRoutes({ name: "web", to: WEB.to }),
  ["routes[0].from: required, expected an object"],
);
rejects(
  "parseConfig rejects a tcp listen port above 65535",
  withRoutes({ ...WEB, from: { type: "tcp", port: 65536 } }),
  ["routes[0].from.port: expected an integer from 0 to 65535, received 65536"],
);
rejects(
  "parseConfig rejects a negative tcp listen port",
  withRoutes({ ...WEB, from: { type: "tcp", port: -1 } }),
  ["routes[0].from.port: expected an integer from 0 to 65535, received -1"],
);
rejects(
  "parseConfig rejects a fractional tcp listen port",
  withRoutes({ ...WEB, from: { type: "tcp", port: 80.5 } }),
  ["routes[0].from.port: expected an integer from 0 to 65535, received 80.5"],
);
rejects(
  "parseConfig rejects a tcp listen port given as a string",
  withRoutes({ ...WEB, from: { type: "tcp", port: "8080" } }),
  [
    'routes[0].from.port: expected an integer from 0 to 65535, received "8080"',
  ],
);
rejects(
  "parseConfig rejects a tcp target port of 0",
  withRoutes({ ...OUT, to: { type: "tcp", host: "127.0.0.1", port: 0 } }),
  ["routes[0].to.port: expected an integer from 1 to 65535, received 0"],
);
rejects(
  "parseConfig rejects a tcp target port given as a service name",
  withRoutes(WEB, { ...WEB, name: "web2", from: { type: "tcp", port: 8081 } }, {
    ...OUT,
    to: { type: "tcp", host: "127.0.0.1", port: "http" },
  }),
  ['routes[2].to.port: expected an integer from 1 to 65535, received "http"'],
);
rejects(
  "parseConfig rejects a tcp listen host with a space",
  withRoutes({ ...WEB, from: { type: "tcp", host: "local host", port: 1 } }),
  [
    'routes[0].from.host: expected a host name or IP address, received "local host"',
  ],
);
rejects(
  "parseConfig rejects an empty tcp listen host with one line",
  withRoutes({ ...WEB, from: { type: "tcp", host: "", port: 1 } }),
  [
    "routes[0].from.host: expected a host name or IP address, received an empty string",
  ],
);
rejects(
  "parseConfig requires a tcp target host",
  withRoutes({ ...OUT, to: { type: "tcp", port: 5432 } }),
  ["routes[0].to.host: required, expected a string"],
);
rejects(
  "parseConfig rejects a vsock port above 4294967294",
  withRoutes({ ...WEB, to: { type: "vsock", port: 0xffffffff } }),
  [
    "routes[0].to.port: expected an integer from 0 to 4294967294, received 4294967295",
  ],
);
accepts(
  "parseConfig accepts vsock port 4294967294",
  withRoutes({ ...WEB, to: { type: "vsock", port: 0xfffffffe } }),
);
rejects(
  "parseConfig rejects a ws path without a leading slash",
  withRoutes({ ...WEB, from: { type: "ws", port: 8082, path: "echo" } }),
  [
    'routes[0].from.path: expected a URL path starting with "/", received "echo"',
  ],
);
rejects(
  "parseConfig requires a ws path",
  withRoutes({ ...WEB, from: { type: "ws", port: 8082 } }),
  ["routes[0].from.path: required, expected a string"],
);
rejects(
  "parseConfig rejects a route from tcp to tcp",
  withRoutes({ ...WEB, to: { type: "tcp", host: "127.0.0.1", port: 80 } }),
  ['routes[0].to.type: a route from tcp must go to vsock, received "tcp"'],
);
rejects(
  "parseConfig rejects a route from vsock to vsock",
  withRoutes({ ...OUT, to: { type: "vsock", port: 80 } }),
  ['routes[0].to.type: a route from vsock must go to tcp, received "vsock"'],
);
rejects(
  "parseConfig rejects a route from ws to tcp",
  withRoutes({
    name: "echo",
    from: { type: "ws", port: 8082, path: "/echo" },
    to: { type: "tcp", host: "127.0.0.1", port: 7 },
  }),
  ['routes[0].to.type: a route from ws must go to vsock, received "tcp"'],
);
rejects(
  "parseConfig rejects a seqpacket vsock side on a route from tcp",
  withRoutes({ ...WEB, to: { type: "vsock", port: 80, socket: "seqpacket" } }),
  [
    'routes[0].to.socket: TCP carries a byte stream, so its vsock side must be "stream", received "seqpacket"',
  ],
);
rejects(
  "parseConfig rejects a seqpacket vsock side on a route to tcp",
  withRoutes({
    ...OUT,
    from: { type: "vsock", port: 9000, socket: "seqpacket" },
  }),
  [
    'routes[0].from.socket: a guest-initiated route forwards to TCP, so its vsock side must be "stream", received "seqpacket"',
  ],
);
rejects(
  "parseConfig rejects an unknown vsock socket type",
  withRoutes({ ...WEB, to: { type: "vsock", port: 80, socket: "dgram" } }),
  [
    'routes[0].to.socket: expected one of "stream", "seqpacket", received "dgram"',
  ],
);
accepts(
  "parseConfig accepts a seqpacket vsock side on a route from ws",
  withRoutes({
    name: "msgs",
    from: { type: "ws", port: 8082, path: "/m" },
    to: { type: "vsock", port: 80, socket: "seqpacket" },
  }),
);
rejects(
  "parseConfig rejects a maxConnections limit of 0",
  withRoutes({ ...WEB, limits: { maxConnections: 0 } }),
  [
    "routes[0].limits.maxConnections: expected an integer from 1 to 1000000, received 0",
  ],
);
rejects(
  "parseConfig rejects a maxConnections limit above 1000000",
  withRoutes({ ...WEB, limits: { maxConnections: 1_000_001 } }),
  [
    "routes[0].limits.maxConnections: expected an integer from 1 to 1000000, received 1000001",
  ],
);
rejects(
  "parseConfig rejects a connectTimeoutMs limit of 0",
  withRoutes({ ...WEB, limits: { connectTimeoutMs: 0 } }),
  [
    "routes[0].limits.connectTimeoutMs: expected an integer from 1 to 600000, received 0",
  ],
);
rejects(
  "parseConfig rejects a connectTimeoutMs limit above ten minutes",
  withRoutes({ ...WEB, limits: { connectTimeoutMs: 600_001 } }),
  [
    "routes[0].limits.connectTimeoutMs: expected an integer from 1 to 600000, received 600001",
  ],
);
rejects(
  "parseConfig rejects a negative idleTimeoutMs limit",
  withRoutes({ ...WEB, limits: { idleTimeoutMs: -1 } }),
  [
    "routes[0].limits.idleTimeoutMs: expected an integer from 0 to 86400000, received -1",
  ],
);
rejects(
  "parseConfig rejects an idleTimeoutMs limit above a day",
  withRoutes({ ...WEB, limits: { idleTimeoutMs: 86_400_001 } }),
  [
    "routes[0].limits.idleTimeoutMs: expected an integer from 0 to 86400000, received 86400001",
  ],
);
rejects(
  "parseConfig rejects unknown limits",
  withRoutes({ ...WEB, limits: { maxConns: 5 } }),
  ['routes[0].limits: unknown field "maxConns"'],
);
rejects(
  "parseConfig rejects a route whose enabled is not a boolean",
  withRoutes({ ...WEB, enabled: "yes" }),
  ['routes[0].enabled: expected a boolean, received "yes"'],
);

// --- conflicts between routes ----------------------------------------------

rejects(
  "parseConfig rejects two routes with the same name",
  withRoutes(WEB, { ...WEB, from: { type: "tcp", port: 8081 } }),
  ['routes[1].name: "web" is already the name of routes[0]'],
);
rejects(
  "parseConfig rejects two tcp routes on the same host and port",
  withRoutes(WEB, { ...WEB, name: "web2" }),
  ["routes[1].from: 127.0.0.1:8080 is already taken by routes[0]"],
);
rejects(
  "parseConfig rejects a tcp and a ws route on the same host and port",
  withRoutes(WEB, {
    name: "echo",
    from: { type: "ws", port: 8080, path: "/echo" },
    to: { type: "vsock", port: 7 },
  }),
  ["routes[1].from: 127.0.0.1:8080 is already taken by routes[0]"],
);
rejects(
  "parseConfig rejects two ws routes on the same host, port and path",
  withRoutes(
    {
      name: "a",
      from: { type: "ws", port: 8082, path: "/echo" },
      to: { type: "vsock", port: 7 },
    },
    {
      name: "b",
      from: { type: "ws", port: 8082, path: "/other" },
      to: { type: "vsock", port: 8 },
    },
    {
      name: "c",
      from: { type: "ws", port: 8082, path: "/echo" },
      to: { type: "vsock", port: 9 },
    },
  ),
  ["routes[2].from.path: 127.0.0.1:8082/echo is already taken by routes[0]"],
);
rejects(
  "parseConfig rejects two guest-initiated routes on the same vsock port",
  withRoutes(OUT, { ...OUT, name: "out2" }),
  ["routes[1].from: vsock:9000 is already taken by routes[0]"],
);
rejects(
  "parseConfig reports a duplicate name and a taken listener on the same route",
  withRoutes(WEB, WEB),
  [
    'routes[1].name: "web" is already the name of routes[0]',
    "routes[1].from: 127.0.0.1:8080 is already taken by routes[0]",
  ],
);
accepts(
  "parseConfig accepts ws routes sharing a host and port on different paths",
  withRoutes(
    {
      name: "a",
      from: { type: "ws", port: 8082, path: "/echo" },
      to: { type: "vsock", port: 7 },
    },
    {
      name: "b",
      from: { type: "ws", port: 8082, path: "/chat" },
      to: { type: "vsock", port: 8 },
    },
  ),
);
accepts(
  "parseConfig accepts tcp routes on the same port of different hosts",
  withRoutes(WEB, {
    ...WEB,
    name: "web2",
    from: { type: "tcp", host: "127.0.0.2", port: 8080 },
  }),
);
accepts(
  "parseConfig never reports listeners on port 0 as conflicting",
  withRoutes(
    { ...WEB, name: "a", from: { type: "tcp", port: 0 } },
    { ...WEB, name: "b", from: { type: "tcp", port: 0 } },
    {
      name: "c",
      from: { type: "ws", port: 0, path: "/echo" },
      to: { type: "vsock", port: 7 },
    },
    {
      name: "d",
      from: { type: "ws", port: 0, path: "/echo" },
      to: { type: "vsock", port: 7 },
    },
  ),
);

Deno.test("routeConflicts() reports paths relative to the route list", () => {
  const routes = parseConfig(withRoutes(WEB)).routes;
  const again: RouteSpec = { ...routes[0]!, name: "web2" };
  assertEquals(routeConflicts([...routes, again]), [{
    path: [1, "from"],
    message: "127.0.0.1:8080 is already taken by routes[0]",
    input: again.from,
  }]);
  assertEquals(routeConflicts(routes), []);
});

// --- admin, log, top level ------------------------------------------------

rejects(
  "parseConfig rejects an admin port above 65535",
  withTop({ admin: { port: 65536 } }),
  ["admin.port: expected an integer from 0 to 65535, received 65536"],
);
rejects(
  "parseConfig rejects an admin token env that is not a variable name",
  withTop({ admin: { token: { env: "1-TOKEN" } } }),
  [/^admin\.token\.env: expected .*variable.*, received "1-TOKEN"$/],
);
rejects(
  "parseConfig rejects an admin token with both env and file",
  withTop({ admin: { token: { env: "TOKEN", file: "/run/token" } } }),
  [/^admin\.token: expected \{"env": "VARIABLE"\} or \{"file": "\/path"\}/],
);
rejects(
  "parseConfig rejects an admin token with neither env nor file",
  withTop({ admin: { token: {} } }),
  [/^admin\.token: expected \{"env": "VARIABLE"\} or \{"file": "\/path"\}/],
);
rejects(
  "parseConfig rejects an empty admin token file",
  withTop({ admin: { token: { file: "" } } }),
  ['admin.token.file: expected a file path, received ""'],
);
rejects(
  "parseConfig rejects admin: true, saying an object or false is expected",
  withTop({ admin: true }),
  [/^admin: expected .*false.*, received true$/],
);
rejects(
  "parseConfig rejects unknown admin fields",
  withTop({ admin: { bind: "0.0.0.0" } }),
  ['admin: unknown field "bind"'],
);
accepts(
  "parseConfig accepts admin: false and an admin token from env or a file",
  withTop({ admin: false }),
  withTop({ admin: { token: { env: "IVSOCK_TOKEN" } } }),
  withTop({ admin: { host: "127.0.0.1", port: 0, token: { file: "/t" } } }),
);

rejects(
  "parseConfig rejects an unknown log format",
  withTop({ log: { format: "xml" } }),
  ['log.format: expected one of "text", "json", received "xml"'],
);
rejects(
  "parseConfig rejects an unknown log level",
  withTop({ log: { level: "trace" } }),
  [
    'log.level: expected one of "debug", "info", "warn", "error", received "trace"',
  ],
);
rejects(
  "parseConfig rejects unknown log fields",
  withTop({ log: { colour: true } }),
  ['log: unknown field "colour"'],
);
rejects(
  "parseConfig rejects a negative shutdownGraceMs",
  withTop({ shutdownGraceMs: -1 }),
  ["shutdownGraceMs: expected an integer from 0 to 600000, received -1"],
);
rejects(
  "parseConfig rejects a shutdownGraceMs above ten minutes",
  withTop({ shutdownGraceMs: 600_001 }),
  ["shutdownGraceMs: expected an integer from 0 to 600000, received 600001"],
);
accepts(
  "parseConfig accepts shutdownGraceMs from 0 to ten minutes",
  withTop({ shutdownGraceMs: 0 }),
  withTop({ shutdownGraceMs: 600_000 }),
);

rejects(
  "parseConfig rejects an unknown top-level field",
  withTop({ route: [] }),
  ['(top level): unknown field "route"'],
);
rejects(
  "parseConfig names every unknown top-level field on one line",
  withTop({ route: [], verbose: true }),
  ['(top level): unknown fields "route", "verbose"'],
);
rejects("parseConfig rejects a top level of null", null, [
  "(top level): expected an object, received null",
]);
rejects("parseConfig rejects a top level that is an array", [], [
  "(top level): expected an object, received an array",
]);
rejects("parseConfig rejects a top level that is a string", "device", [
  '(top level): expected an object, received "device"',
]);

rejects(
  "parseConfig reports every problem of a config, not only the first",
  {
    device: { region: "", guestCid: 2 },
    routes: [{ ...WEB, from: { type: "tcp", port: 70000 } }],
    log: { level: "loud" },
  },
  [
    "device.region: expected a file path, received an empty string",
    "device.guestCid: expected an integer from 3 to 4294967294, received 2",
    "routes[0].from.port: expected an integer from 0 to 65535, received 70000",
    'log.level: expected one of "debug", "info", "warn", "error", received "loud"',
  ],
);

Deno.test("every problem line starts with a field path or (top level), then ': '", () => {
  const path =
    /^(\(top level\)|[A-Za-z][A-Za-z0-9]*(\[\d+\]|\.[A-Za-z][A-Za-z0-9]*)*): \S/;
  for (const { what, value } of REJECTED) {
    for (const line of problemsOf(value)) {
      assertMatch(line, path, `${what}: ${JSON.stringify(line)}`);
    }
  }
});

Deno.test("ConfigError names the source, then one problem or a count and a list", () => {
  const one = assertThrows(() => parseConfig({}, "c.json"), ConfigError);
  assertEquals(one.name, "ConfigError");
  assertEquals(one.message, "c.json: device: required, expected an object");
  const two = assertThrows(
    () => parseConfig(withTop({ extra: 1, shutdownGraceMs: -1 }), "c.json"),
    ConfigError,
  );
  assertEquals(
    two.message,
    'c.json: 2 problems:\n  shutdownGraceMs: expected an integer from 0 to 600000, received -1\n  (top level): unknown field "extra"',
  );
});

// --- defaults --------------------------------------------------------------

Deno.test("parseConfig fills in the defaults of a minimal config", () => {
  assertEquals(parseConfig({ device: { region: REGION } }), {
    device: {
      region: REGION,
      size: 4 << 20,
      guestCid: 3,
      bufAlloc: 4 << 20,
      maxQueueSize: 1024,
      driverTimeoutMs: 3000,
    },
    routes: [],
    admin: { host: "127.0.0.1", port: 8090 },
    log: { format: "text", level: "info" },
    shutdownGraceMs: 5000,
  });
});

Deno.test("parseConfig fills in a route's enabled, host, socket and limits", () => {
  const [web, out] = parseConfig(withRoutes(WEB, OUT)).routes;
  assertEquals(web, {
    name: "web",
    enabled: true,
    from: { type: "tcp", host: "127.0.0.1", port: 8080 },
    to: { type: "vsock", port: 80, socket: "stream" },
    limits: { maxConnections: 1024, connectTimeoutMs: 2000, idleTimeoutMs: 0 },
  });
  assertEquals(out?.from, { type: "vsock", port: 9000, socket: "stream" });
  const ws = parseConfig(withRoutes({
    name: "echo",
    enabled: false,
    from: { type: "ws", port: 8082, path: "/echo" },
    to: { type: "vsock", port: 7 },
    limits: { idleTimeoutMs: 1000 },
  })).routes[0];
  assertEquals(ws?.enabled, false);
  assertEquals(ws?.from, {
    type: "ws",
    host: "127.0.0.1",
    port: 8082,
    path: "/echo",
  });
  assertEquals(ws?.limits, {
    maxConnections: 1024,
    connectTimeoutMs: 2000,
    idleTimeoutMs: 1000,
  });
});

Deno.test("parseConfig fills in the admin host and port, and keeps admin: false", () => {
  assertEquals(parseConfig(withTop({ admin: {} })).admin, {
    host: "127.0.0.1",
    port: 8090,
  });
  assertEquals(parseConfig(withTop({ admin: { port: 0 } })).admin, {
    host: "127.0.0.1",
    port: 0,
  });
  assertEquals(parseConfig(withTop({ admin: false })).admin, false);
  assertEquals(
    parseConfig(withDevice({ doorbell: { socket: "/tmp/s" } })).device.doorbell,
    { socket: "/tmp/s", vectors: 2 },
  );
});

// --- helpers ---------------------------------------------------------------

Deno.test("parseSize() reads binary K, M and G with or without iB", () => {
  assertEquals(parseSize("4MiB"), 4194304);
  assertEquals(parseSize("16M"), 16 << 20);
  assertEquals(parseSize("256K"), 262144);
  assertEquals(parseSize("256kib"), 262144);
  assertEquals(parseSize("4 MiB"), 4194304);
  assertEquals(parseSize("1G"), 1 << 30);
  assertEquals(parseSize("2GiB"), 2 ** 31);
  assertEquals(parseSize("262144"), 262144);
});

Deno.test("parseSize() rejects text that is not a size, naming it", () => {
  for (const text of ["lots", "4TiB", "1.5M", ""]) {
    assertThrows(() => parseSize(text), Error, JSON.stringify(text));
  }
});

Deno.test("formatPath() writes array indexes in brackets and fields with dots", () => {
  assertEquals(formatPath(["routes", 2, "to", "port"]), "routes[2].to.port");
  assertEquals(formatPath(["device"]), "device");
  assertEquals(formatPath([]), "(top level)");
});

// --- loadConfig ------------------------------------------------------------

async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "ivsock-config-test-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("loadConfig reports a missing file", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/missing.json`;
    const err = await assertRejects(() => loadConfig(path), ConfigError);
    assertEquals(err.problems, ["cannot read the config file: no such file"]);
    assertEquals(
      err.message,
      `${path}: cannot read the config file: no such file`,
    );
  });
});

Deno.test("loadConfig reports a directory plainly, without the OS error text", async () => {
  await withTempDir(async (dir) => {
    const err = await assertRejects(() => loadConfig(dir), ConfigError);
    assertEquals(err.problems.length, 1);
    const line = err.problems[0]!;
    assertMatch(line, /^cannot read the config file: .*directory/i);
    assert(!/os error|readfile/i.test(line), line);
    assert(!line.includes(dir), `the path is already in front: ${line}`);
  });
});

Deno.test("loadConfig reports invalid JSON with the parser's position", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/c.json`;
    await Deno.writeTextFile(
      path,
      '{\n  "device": {\n    "region": "/dev/shm/x",\n  }\n}\n',
    );
    const err = await assertRejects(() => loadConfig(path), ConfigError);
    assertEquals(err.problems.length, 1);
    assertMatch(err.problems[0]!, /^not valid JSON: .*position \d+/);
    assertMatch(err.problems[0]!, /line 4 column 3/);
    assert(err.message.startsWith(`${path}: not valid JSON: `), err.message);
  });
});

Deno.test("loadConfig reports an empty file as not valid JSON", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/c.json`;
    await Deno.writeTextFile(path, "");
    const err = await assertRejects(() => loadConfig(path), ConfigError);
    assertMatch(err.problems[0]!, /^not valid JSON: /);
  });
});

Deno.test("loadConfig reports schema problems under the file's name", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/c.json`;
    await Deno.writeTextFile(path, JSON.stringify({ device: { region: "" } }));
    const err = await assertRejects(() => loadConfig(path), ConfigError);
    assertEquals(err.problems, [
      "device.region: expected a file path, received an empty string",
    ]);
    assertEquals(
      err.message,
      `${path}: device.region: expected a file path, received an empty string`,
    );
  });
});

Deno.test("loadConfig returns the filled-in config of a valid file", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/c.json`;
    await Deno.writeTextFile(
      path,
      JSON.stringify({
        device: { region: REGION, size: "1MiB" },
        routes: [WEB],
      }),
    );
    const config = await loadConfig(path);
    assertEquals(config.device.size, 1 << 20);
    assertEquals(config.routes[0]?.from, {
      type: "tcp",
      host: "127.0.0.1",
      port: 8080,
    });
  });
});
