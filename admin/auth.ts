/**
 * The admin API's bearer token: where it comes from, when it is required,
 * and a constant-time check. The token is never logged.
 *
 * @module
 */

import { timingSafeEqual } from "../deps.ts";
import type { MiddlewareHandler } from "../deps.ts";

/** Where the token is configured. */
export type TokenSource = { env: string } | { file: string };

/** The token cannot be loaded or is required and missing. */
export class AdminAuthError extends Error {
  override name = "AdminAuthError";
}

/** Whether `host` only accepts connections from this machine. */
export function isLoopback(host: string): boolean {
  const h = host.replace(/^\[(.*)\]$/, "$1").toLowerCase();
  return h === "localhost" || h === "::1" || /^127\.\d+\.\d+\.\d+$/.test(h);
}

/**
 * Loads the token, or returns null when none is configured. Refuses a
 * non-loopback `host` without one.
 *
 * @throws {AdminAuthError} naming the field and the problem.
 */
export async function loadToken(
  host: string,
  source: TokenSource | undefined,
): Promise<string | null> {
  if (source === undefined) {
    if (!isLoopback(host)) {
      throw new AdminAuthError(
        `admin.host ${host} is not a loopback address: set admin.token to {"env": "VARIABLE"} or {"file": "/path"} so that the API is not open to anyone who can reach it`,
      );
    }
    return null;
  }
  let token: string | undefined;
  if ("env" in source) {
    token = Deno.env.get(source.env);
    if (token === undefined) {
      throw new AdminAuthError(
        `admin.token: environment variable ${source.env} is not set`,
      );
    }
  } else {
    try {
      token = await Deno.readTextFile(source.file);
    } catch (err) {
      throw new AdminAuthError(
        `admin.token: cannot read ${source.file}: ${
          err instanceof Error ? err.message : err
        }`,
      );
    }
  }
  token = token.trim();
  if (token.length < 16) {
    throw new AdminAuthError(
      `admin.token: the token must be at least 16 characters, received ${token.length}`,
    );
  }
  return token;
}

/**
 * Requires `Authorization: Bearer <token>`. Both sides are hashed first so
 * the comparison takes the same time whatever the lengths and contents.
 */
export function requireToken(token: string): MiddlewareHandler {
  const expected = digest(token);
  return async function requireToken(c, next) {
    const header = c.req.header("authorization") ?? "";
    const m = /^Bearer\s+(.+)$/i.exec(header);
    const ok = m !== null &&
      timingSafeEqual(await digest(m[1]!.trim()), await expected);
    if (!ok) {
      c.header("www-authenticate", 'Bearer realm="ivsock"');
      return c.json({ error: "a valid bearer token is required" }, 401);
    }
    await next();
  };
}

async function digest(s: string): Promise<Uint8Array> {
  return new Uint8Array(
    await crypto.subtle.digest("SHA-256", new TextEncoder().encode(s)),
  );
}
