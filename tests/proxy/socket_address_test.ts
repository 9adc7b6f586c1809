import "../_support/ffi.ts";
import { assert, assertEquals, assertThrows } from "../../dev_deps.ts";
import {
  AF_INET,
  AF_INET6,
  AF_UNIX,
  decodeSockaddr,
  formatIPv6,
  inetSockaddr,
  parseIPv4,
  parseIPv6,
  resolveHost,
  unixSockaddr,
} from "../../proxy/socket_address.ts";
import { Prng } from "../_support/prng.ts";

/** The sixteen bytes of eight 16-bit groups. */
function groupBytes(...groups: number[]): number[] {
  return groups.flatMap((g) => [g >> 8, g & 0xff]);
}

Deno.test("parseIPv4() returns the four bytes of a dotted quad", () => {
  assertEquals(parseIPv4("127.0.0.1"), [127, 0, 0, 1]);
  assertEquals(parseIPv4("0.0.0.0"), [0, 0, 0, 0]);
  assertEquals(parseIPv4("255.255.255.255"), [255, 255, 255, 255]);
  assertEquals(parseIPv4("192.0.2.33"), [192, 0, 2, 33]);
});

Deno.test("parseIPv4() returns null for anything but four decimal bytes", () => {
  for (
    const bad of [
      "",
      "1.2.3",
      "1.2.3.4.5",
      "256.0.0.1",
      "1.2.3.1000",
      "1..3.4",
      "1.2.3.",
      ".1.2.3",
      "1.2.3.-4",
      "+1.2.3.4",
      "0x7f.0.0.1",
      "a.b.c.d",
      " 1.2.3.4",
      "1.2.3.4 ",
      "1.2.3.4/8",
      "1.2.3.4:80",
      "127.1",
      "::1",
      "localhost",
      // Leading zeros: inet_pton refuses them and getaddrinfo reads octal.
      "010.0.0.1",
      "1.2.3.04",
    ]
  ) {
    assertEquals(parseIPv4(bad), null, `"${bad}"`);
  }
});

Deno.test("parseIPv6() returns the sixteen bytes of full, compressed and bracketed forms", () => {
  const loopback = groupBytes(0, 0, 0, 0, 0, 0, 0, 1);
  assertEquals(parseIPv6("::1"), loopback);
  assertEquals(parseIPv6("[::1]"), loopback);
  assertEquals(parseIPv6("0:0:0:0:0:0:0:1"), loopback);
  assertEquals(parseIPv6("::"), Array<number>(16).fill(0));
  assertEquals(parseIPv6("1::"), groupBytes(1, 0, 0, 0, 0, 0, 0, 0));
  const doc = groupBytes(0x2001, 0xdb8, 0, 0, 0, 0xff00, 0x42, 0x8329);
  assertEquals(parseIPv6("2001:0db8:0000:0000:0000:ff00:0042:8329"), doc);
  assertEquals(parseIPv6("2001:db8::ff00:42:8329"), doc);
  assertEquals(parseIPv6("2001:DB8::FF00:42:8329"), doc, "hex in any case");
  // `::` may stand for a single group when parsing (RFC 4291 2.2).
  assertEquals(
    parseIPv6("1:2:3:4:5:6:7::"),
    groupBytes(1, 2, 3, 4, 5, 6, 7, 0),
  );
});

Deno.test("parseIPv6() reads a trailing dotted quad as the last two groups", () => {
  assertEquals(
    parseIPv6("::ffff:192.0.2.1"),
    [...Array<number>(10).fill(0), 0xff, 0xff, 192, 0, 2, 1],
  );
  assertEquals(
    parseIPv6("1:2:3:4:5:6:10.0.0.255"),
    groupBytes(1, 2, 3, 4, 5, 6, 0x0a00, 0x00ff),
  );
  assertEquals(parseIPv6("[::ffff:127.0.0.1]"), parseIPv6("::ffff:7f00:1"));
});

Deno.test("parseIPv6() returns null for malformed literals", () => {
  for (
    const bad of [
      "",
      "[]",
      "1.2.3.4",
      ":",
      ":::",
      "1::2::3",
      "1:2:3:4:5:6:7",
      "1:2:3:4:5:6:7:8:9",
      "1:2:3:4:5:6:7:8::",
      "::1:2:3:4:5:6:7:8",
      ":1:2:3:4:5:6:7",
      "1:2:3:4:5:6:7:",
      ":1::",
      "12345::",
      "g::",
      "::-1",
      "::+1",
      "[::1",
      "::1]",
      "fe80::1%eth0",
      "::ffff:1.2.3",
      "::ffff:256.0.0.1",
      "::1.2.3.4:5",
      "1.2.3.4::",
      "1:2:3:4:5:6:7:1.2.3.4",
      "localhost",
    ]
  ) {
    assertEquals(parseIPv6(bad), null, `"${bad}"`);
  }
});

Deno.test("formatIPv6() prints RFC 5952 text: lower case, no leading zeros, the longest zero run as ::", () => {
  const cases: Array<[string, string]> = [
    // 4.1 and 4.3: leading zeros dropped, lower case.
    ["2001:0DB8:0000:0000:0000:0000:0002:0001", "2001:db8::2:1"],
    [
      "2001:db8:aaaa:bbbb:cccc:dddd:eeee:0001",
      "2001:db8:aaaa:bbbb:cccc:dddd:eeee:1",
    ],
    // 4.2.2: one zero group stays.
    ["2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1"],
    ["0:1:2:3:4:5:6:7", "0:1:2:3:4:5:6:7"],
    ["1:2:3:4:5:6:7:0", "1:2:3:4:5:6:7:0"],
    // 4.2.3: the longest run, and the first of equal runs.
    ["2001:0:0:1:0:0:0:1", "2001:0:0:1::1"],
    ["2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"],
    ["1:0:0:2:0:0:3:4", "1::2:0:0:3:4"],
    // The run may be at either end, or everything.
    ["0:0:0:0:0:0:0:0", "::"],
    ["0:0:0:0:0:0:0:1", "::1"],
    ["1:0:0:0:0:0:0:0", "1::"],
    ["0:0:1:2:3:4:5:6", "::1:2:3:4:5:6"],
    ["1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8"],
    // 5: an IPv4-mapped address ends in a dotted quad.
    ["::ffff:c000:280", "::ffff:192.0.2.128"],
    ["0:0:0:0:0:ffff:7f00:1", "::ffff:127.0.0.1"],
    // ... but only with exactly that prefix.
    ["0:0:0:0:1:ffff:7f00:1", "::1:ffff:7f00:1"],
    ["64:ff9b::c000:280", "64:ff9b::c000:280"],
  ];
  for (const [input, want] of cases) {
    const bytes = parseIPv6(input);
    assert(bytes !== null, input);
    assertEquals(formatIPv6(bytes), want, input);
  }
});

Deno.test("formatIPv6() output parses back to the same bytes", () => {
  const seed = 5952;
  const rng = new Prng(seed);
  for (let i = 0; i < 2000; i++) {
    // Mostly zero groups, so that runs of every length and place occur.
    const groups = Array.from(
      { length: 8 },
      () =>
        rng.chance(0.5) ? 0 : rng.pick([1, 0xff, 0xffff, rng.u32() & 0xffff]),
    );
    const bytes = groupBytes(...groups);
    const text = formatIPv6(bytes);
    assertEquals(parseIPv6(text), bytes, `seed ${seed}, case ${i}: ${text}`);
    assert(!text.includes(":::"), text);
  }
});

Deno.test("inetSockaddr() lays out a sockaddr_in: family, big-endian port, address, zero padding", () => {
  const sa = inetSockaddr("192.0.2.1", 0x1f90);
  assertEquals(sa.family, AF_INET);
  assertEquals(
    [...sa.bytes],
    [AF_INET, 0, 0x1f, 0x90, 192, 0, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0],
  );
});

Deno.test("inetSockaddr() lays out a sockaddr_in6: zero flow info and scope around the address", () => {
  const sa = inetSockaddr("[2001:db8::1]", 443);
  assertEquals(sa.family, AF_INET6);
  assertEquals(sa.bytes.length, 28);
  assertEquals([...sa.bytes.subarray(0, 4)], [AF_INET6, 0, 0x01, 0xbb]);
  assertEquals([...sa.bytes.subarray(4, 8)], [0, 0, 0, 0]);
  assertEquals(
    [...sa.bytes.subarray(8, 24)],
    groupBytes(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1),
  );
  assertEquals([...sa.bytes.subarray(24)], [0, 0, 0, 0]);
});

Deno.test("inetSockaddr() throws RangeError for a port outside 0-65535", () => {
  for (const bad of [-1, 65536, 1.5, NaN]) {
    assertThrows(
      () => inetSockaddr("127.0.0.1", bad),
      RangeError,
      "Invalid port (out of range)",
    );
  }
});

Deno.test("inetSockaddr() throws TypeError for what is not an IP literal", () => {
  for (const bad of ["localhost", "1.2.3", "", "::1%lo"]) {
    assertThrows(
      () => inetSockaddr(bad, 80),
      TypeError,
      `Expected an IP address, received "${bad}"`,
    );
  }
});

Deno.test("decodeSockaddr() reads back what inetSockaddr() built, IPv4 and IPv6", () => {
  const cases: Array<[string, number, string]> = [
    ["127.0.0.1", 8080, "127.0.0.1"],
    ["0.0.0.0", 0, "0.0.0.0"],
    ["255.255.255.255", 65535, "255.255.255.255"],
    ["::1", 1, "::1"],
    ["[::1]", 2, "::1"],
    ["2001:0db8:0:0:1:0:0:1", 443, "2001:db8::1:0:0:1"],
    ["::ffff:10.0.0.1", 80, "::ffff:10.0.0.1"],
  ];
  for (const [ip, port, hostname] of cases) {
    const { bytes } = inetSockaddr(ip, port);
    assertEquals(
      decodeSockaddr(bytes, bytes.length),
      { transport: "tcp", hostname, port },
      ip,
    );
  }
});

Deno.test("decodeSockaddr() reads a sockaddr that starts inside a larger buffer", () => {
  const { bytes } = inetSockaddr("2001:db8::7", 9000);
  const big = new Uint8Array(64).fill(0xee);
  big.set(bytes, 8);
  assertEquals(
    decodeSockaddr(big.subarray(8), bytes.length),
    { transport: "tcp", hostname: "2001:db8::7", port: 9000 },
  );
});

Deno.test("unixSockaddr() lays out a sockaddr_un, and decodeSockaddr() reads the path back", () => {
  const path = "/tmp/ivsock/echo.sock";
  const sa = unixSockaddr(path);
  assertEquals(sa.family, AF_UNIX);
  assertEquals(sa.bytes.length, 110);
  assertEquals([...sa.bytes.subarray(0, 2)], [AF_UNIX, 0]);
  assertEquals(
    new TextDecoder().decode(sa.bytes.subarray(2, 2 + path.length)),
    path,
  );
  assertEquals(sa.bytes[2 + path.length], 0, "NUL-terminated");
  assertEquals(decodeSockaddr(sa.bytes, sa.bytes.length), {
    transport: "unix",
    path,
  });
  // The kernel's length for a bound path: family, path, NUL.
  assertEquals(decodeSockaddr(sa.bytes, 2 + path.length + 1), {
    transport: "unix",
    path,
  });
  // An unnamed socket (a connect()ed client) has only the family.
  assertEquals(decodeSockaddr(sa.bytes, 2), { transport: "unix", path: "" });
});

Deno.test("unixSockaddr() takes at most 107 bytes of path, counted in UTF-8, and throws RangeError beyond", () => {
  const longest = `/${"p".repeat(106)}`;
  assertEquals(
    decodeSockaddr(unixSockaddr(longest).bytes, 110),
    { transport: "unix", path: longest },
  );
  assertThrows(
    () => unixSockaddr(`${longest}q`),
    RangeError,
    "Socket path must be at most 107 bytes, received 108",
  );
  // 54 characters, 108 bytes.
  assertThrows(
    () => unixSockaddr("é".repeat(54)),
    RangeError,
    "received 108",
  );
});

Deno.test("resolveHost() returns an IP literal as it is, without brackets", async () => {
  assertEquals(await resolveHost("127.0.0.1"), ["127.0.0.1"]);
  assertEquals(await resolveHost("::1"), ["::1"]);
  assertEquals(await resolveHost("[::1]"), ["::1"]);
  assertEquals(await resolveHost("2001:DB8::1"), ["2001:DB8::1"]);
});

Deno.test("resolveHost() resolves localhost to loopback addresses only", async () => {
  const addrs = await resolveHost("localhost");
  assert(addrs.length > 0);
  for (const a of addrs) {
    const v4 = parseIPv4(a);
    assert(
      v4?.[0] === 127 || a === "::1",
      `localhost resolved to ${addrs.join(", ")}`,
    );
  }
});
