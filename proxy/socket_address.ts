/**
 * Socket addresses for the data plane's own sockets: IP literals parsed and
 * printed, host names resolved, and the kernel's `sockaddr` structures
 * built and read.
 *
 * Layouts (Linux, every architecture):
 *
 * ```text
 * sockaddr_in  { u16 family = 2;  u16 port (big-endian); u8 addr[4]; u8 zero[8] }  16 bytes
 * sockaddr_in6 { u16 family = 10; u16 port (big-endian); u32 flowinfo;
 *                u8 addr[16]; u32 scope_id }                                      28 bytes
 * sockaddr_un  { u16 family = 1;  char path[108] }                                110 bytes
 * ```
 *
 * @module
 */

import { lookup } from "../deps.ts";

export const AF_UNIX = 1;
export const AF_INET = 2;
export const AF_INET6 = 10;

/** Room for any address the kernel hands back (sockaddr_storage). */
export const SOCKADDR_MAX = 128;

/** `sizeof(sun_path)` less its NUL terminator. */
const MAX_UNIX_PATH = 107;

/** Where a socket is: an IP address and port, or a UNIX socket path. */
export type SocketAddress =
  | { transport: "tcp"; hostname: string; port: number }
  | { transport: "unix"; path: string };

/** A `sockaddr` ready for bind(2) or connect(2), and its family. */
export interface Sockaddr {
  family: number;
  bytes: Uint8Array<ArrayBuffer>;
}

/** The four bytes of a dotted IPv4 literal, or null. */
export function parseIPv4(s: string): number[] | null {
  const parts = s.split(".");
  if (parts.length !== 4) return null;
  const out: number[] = [];
  for (const p of parts) {
    // No leading zeros: inet_pton refuses them, getaddrinfo reads octal.
    if (!/^(0|[1-9]\d{0,2})$/.test(p) || Number(p) > 255) return null;
    out.push(Number(p));
  }
  return out;
}

/** The sixteen bytes of an IPv6 literal (brackets allowed), or null. */
export function parseIPv6(s: string): number[] | null {
  let text = s.startsWith("[") && s.endsWith("]") ? s.slice(1, -1) : s;
  if (!text.includes(":") || text.includes("%")) return null;
  // A trailing dotted quad (::ffff:1.2.3.4) stands for the last two groups.
  const lastColon = text.lastIndexOf(":");
  const tail = text.slice(lastColon + 1);
  if (tail.includes(".")) {
    const v4 = parseIPv4(tail);
    if (v4 === null) return null;
    text = `${text.slice(0, lastColon + 1)}${
      ((v4[0]! << 8) | v4[1]!).toString(16)
    }:${((v4[2]! << 8) | v4[3]!).toString(16)}`;
  }
  const halves = text.split("::");
  if (halves.length > 2) return null;
  const groups = (h: string) => h === "" ? [] : h.split(":");
  const head = groups(halves[0]!);
  const rest = halves.length === 2 ? groups(halves[1]!) : [];
  const fill = 8 - head.length - rest.length;
  if (halves.length === 2 ? fill < 1 : fill !== 0) return null;
  const all = [...head, ...Array<string>(fill).fill("0"), ...rest];
  const out: number[] = [];
  for (const g of all) {
    if (!/^[0-9a-fA-F]{1,4}$/.test(g)) return null;
    const v = parseInt(g, 16);
    out.push(v >> 8, v & 0xff);
  }
  return out;
}

/** An IPv6 address as RFC 5952 prints it (the longest zero run as `::`). */
export function formatIPv6(bytes: ArrayLike<number>): string {
  const groups: number[] = [];
  for (let i = 0; i < 16; i += 2) groups.push((bytes[i]! << 8) | bytes[i + 1]!);
  if (groups.slice(0, 5).every((g) => g === 0) && groups[5] === 0xffff) {
    return `::ffff:${bytes[12]}.${bytes[13]}.${bytes[14]}.${bytes[15]}`;
  }
  let bestAt = -1;
  let bestLen = 1; // a single zero group is not shortened
  for (let i = 0; i < 8;) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen) {
      bestAt = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (bestAt < 0) return hex.join(":");
  return `${hex.slice(0, bestAt).join(":")}::${
    hex.slice(bestAt + bestLen).join(":")
  }`;
}

/**
 * The addresses `host` stands for: itself when it is an IP literal, else
 * what the system resolver says (`/etc/hosts`, then DNS), in its order.
 *
 * @throws {Error} naming the host when it does not resolve.
 */
export async function resolveHost(host: string): Promise<string[]> {
  if (parseIPv4(host) !== null) return [host];
  if (parseIPv6(host) !== null) return [host.replace(/^\[|\]$/g, "")];
  let found: Array<{ address: string }>;
  try {
    found = await lookup(host, { all: true });
  } catch (err) {
    throw new Error(
      `Cannot resolve ${host}: ${err instanceof Error ? err.message : err}`,
      { cause: err },
    );
  }
  if (found.length === 0) throw new Error(`Cannot resolve ${host}: no address`);
  return found.map((a) => a.address);
}

/**
 * The `sockaddr` of an IP literal and port.
 *
 * @throws {TypeError} when `ip` is not an IPv4 or IPv6 literal.
 */
export function inetSockaddr(ip: string, port: number): Sockaddr {
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new RangeError(`Invalid port (out of range): ${port}`);
  }
  const v4 = parseIPv4(ip);
  if (v4 !== null) {
    const bytes = new Uint8Array(16);
    const v = new DataView(bytes.buffer);
    v.setUint16(0, AF_INET, true);
    v.setUint16(2, port, false);
    bytes.set(v4, 4);
    return { family: AF_INET, bytes };
  }
  const v6 = parseIPv6(ip);
  if (v6 === null) {
    throw new TypeError(`Expected an IP address, received "${ip}"`);
  }
  const bytes = new Uint8Array(28);
  const v = new DataView(bytes.buffer);
  v.setUint16(0, AF_INET6, true);
  v.setUint16(2, port, false);
  bytes.set(v6, 8);
  return { family: AF_INET6, bytes };
}

/**
 * The `sockaddr_un` of a path.
 *
 * @throws {RangeError} when the path does not fit `sun_path`.
 */
export function unixSockaddr(path: string): Sockaddr {
  const encoded = new TextEncoder().encode(path);
  if (encoded.length > MAX_UNIX_PATH) {
    throw new RangeError(
      `Socket path must be at most ${MAX_UNIX_PATH} bytes, received ${encoded.length} (${path})`,
    );
  }
  const bytes = new Uint8Array(110);
  new DataView(bytes.buffer).setUint16(0, AF_UNIX, true);
  bytes.set(encoded, 2);
  return { family: AF_UNIX, bytes };
}

/** Reads a `sockaddr` the kernel filled in (`len` bytes of it). */
export function decodeSockaddr(bytes: Uint8Array, len: number): SocketAddress {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const family = len >= 2 ? v.getUint16(0, true) : -1;
  if (family === AF_INET && len >= 8) {
    return {
      transport: "tcp",
      hostname: `${bytes[4]}.${bytes[5]}.${bytes[6]}.${bytes[7]}`,
      port: v.getUint16(2, false),
    };
  }
  if (family === AF_INET6 && len >= 24) {
    return {
      transport: "tcp",
      hostname: formatIPv6(bytes.subarray(8, 24)),
      port: v.getUint16(2, false),
    };
  }
  const path = len > 2
    ? new TextDecoder().decode(bytes.subarray(2, len)).replace(/\0.*$/s, "")
    : "";
  return { transport: "unix", path };
}
