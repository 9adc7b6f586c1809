/**
 * What the soak's connection number `i` does, from the run's seed alone: its
 * route (host to guest over TCP or WebSocket, or guest to host), its sizes
 * each way, where its streams start in the pattern, and whether and where a
 * side resets it. The same seed gives the same connections, whatever the
 * timing.
 *
 * @module
 */

import type { TransferSpec } from "../_support/checked_transfer.ts";
import { Prng } from "../_support/prng.ts";

/** Which route a connection takes. */
export type Kind = "h2g" | "ws" | "g2h";

/** Share of each kind, in this order: mostly TCP both ways, some WebSocket. */
const KIND_WEIGHTS: Array<[Kind, number]> = [
  ["h2g", 0.5],
  ["g2h", 0.35],
  ["ws", 0.15],
];

/** Smallest stream each way on a connection that is to be reset mid-stream. */
const RESET_MIN_BYTES = 64 * 1024;

/** One planned connection. */
export interface Planned {
  kind: Kind;
  spec: TransferSpec;
  /** Who resets it, if anyone. */
  resetBy: "client" | "service" | null;
  /** The client's reset point (payload bytes either way), if it resets. */
  clientResetAt: number | null;
}

/** Settings the plan depends on. */
export interface MixOptions {
  seed: number;
  maxBytes: number;
  resetFraction: number;
  patternSize: number;
}

/** The plan of connection `i`. */
export function plan(i: number, o: MixOptions): Planned {
  const r = new Prng((Math.imul(o.seed, 0x9e3779b1) ^ i) >>> 0);
  let x = r.u32() / 0x1_0000_0000;
  let kind: Kind = "h2g";
  for (const [k, w] of KIND_WEIGHTS) {
    if (x < w) {
      kind = k;
      break;
    }
    x -= w;
  }
  const reset = r.chance(o.resetFraction);
  const size = () => {
    // Mostly log-uniform (many small, some large), a third uniform, some zero.
    const pick = r.u32() % 10;
    if (pick === 0) return 0;
    if (pick <= 3) return r.int(0, o.maxBytes);
    return Math.floor(Math.exp(r.u32() / 0x1_0000_0000 * Math.log(o.maxBytes)));
  };
  let up = size();
  let down = size();
  if (reset) {
    up = Math.max(up, RESET_MIN_BYTES);
    down = Math.max(down, RESET_MIN_BYTES);
  }
  const resetBy = reset ? (r.chance(0.5) ? "client" : "service") : null;
  // Strictly inside the stream, so the reset always cuts something.
  const at = reset ? r.int(1, up + down - 1) : null;
  return {
    kind,
    spec: {
      id: i,
      up,
      down,
      upAt: r.int(0, o.patternSize - 1),
      downAt: r.int(0, o.patternSize - 1),
      serviceResetAt: resetBy === "service" ? at : null,
    },
    resetBy,
    clientResetAt: resetBy === "client" ? at : null,
  };
}
