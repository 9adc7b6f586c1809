/**
 * Host applications that accept connections and never read them: what a
 * stalled consumer looks like to the engine. The hostile actor floods them
 * with empty and tiny packets, which cost memory without using credit; the
 * engine must reset such a peer instead of queueing without bound.
 *
 * @module
 */

import type { VsockEngine } from "../../device/vsock/engine.ts";
import type { VsockConnection } from "../../device/vsock/connection.ts";
import type { VsockListener } from "../../device/vsock/listener.ts";

/** Host STREAM port whose connections are never read. */
export const SINK_STREAM_PORT = 5002;
/** Host SEQPACKET port whose connections are never read. */
export const SINK_SEQ_PORT = 5003;

/** Accepts on the sink ports and holds every connection unread. */
export class HostSinks {
  #listeners: VsockListener[];
  #accepting: Promise<void>[];
  #held = new Set<VsockConnection>();

  constructor(host: VsockEngine) {
    this.#listeners = [
      host.listen(SINK_STREAM_PORT),
      host.listen(SINK_SEQ_PORT, { type: "seqpacket" }),
    ];
    this.#accepting = this.#listeners.map(async (l) => {
      for await (const conn of l) {
        this.#held.add(conn);
        conn.closed.then(() => this.#held.delete(conn));
      }
    });
  }

  /** The held connection from the guest's `peerPort`, if any. */
  find(localPort: number, peerPort: number): VsockConnection | undefined {
    for (const c of this.#held) {
      if (c.localPort === localPort && c.peerPort === peerPort) return c;
    }
    return undefined;
  }

  /** Connections held now. */
  get held(): number {
    return this.#held.size;
  }

  /** Stops accepting (the engine closes what is held). */
  async stop(): Promise<void> {
    for (const l of this.#listeners) l.close();
    await Promise.all(this.#accepting);
  }
}
