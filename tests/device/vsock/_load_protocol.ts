/**
 * The load test's wire format, shared by both children. Each connection
 * carries, in each direction: a 12-byte header (connection index, bytes up,
 * bytes down, little-endian u32s; host to guest only), the payload (a
 * seeded pseudo-random stream), then the SHA-256 of the payload as the
 * sender computed it. The receiver hashes what arrived and compares.
 */

import { createHash } from "node:crypto";
import { ByteReader } from "../../_support/byte_reader.ts";
import { Prng } from "../../_support/prng.ts";

export const LOAD_PORT = 7000;
const CHUNK = 64 * 1024;

/** Sizes of connection `i`'s payloads, from the run's seed. */
export function sizes(
  seed: number,
  i: number,
  max: number,
): { up: number; down: number } {
  const r = new Prng((seed * 100_003 + i) >>> 0);
  return { up: r.int(0, max), down: r.int(0, max) };
}

/** Writes `n` seeded bytes then their SHA-256. */
export async function sendPayload(
  w: WritableStreamDefaultWriter<Uint8Array>,
  seed: number,
  n: number,
): Promise<void> {
  const rng = new Prng(seed);
  const hash = createHash("sha256");
  for (let at = 0; at < n; at += CHUNK) {
    const chunk = rng.bytes(Math.min(CHUNK, n - at));
    hash.update(chunk);
    await w.write(chunk);
  }
  await w.write(new Uint8Array(hash.digest()));
}

/** Reads `n` bytes and the sender's SHA-256; true when they agree. */
export async function receivePayload(
  r: ByteReader,
  n: number,
): Promise<boolean> {
  const hash = createHash("sha256");
  await r.consume(n, (p) => hash.update(p));
  const mine = new Uint8Array(hash.digest());
  const theirs = await r.exactly(32);
  return mine.every((b, i) => b === theirs[i]);
}
