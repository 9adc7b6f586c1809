/**
 * Joins byte chunks into one array: what the tests do with whatever a
 * stream, a socket or a ring handed them in pieces.
 *
 * @module
 */

/** The bytes of `parts`, in order, in one new array. */
export function concatBytes(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
