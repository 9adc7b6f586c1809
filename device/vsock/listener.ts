/**
 * A vsock listener: connections the peer opened to a local port, waiting
 * to be accepted, at most `backlog` of them.
 *
 * @module
 */

import type { VsockConnection } from "./connection.ts";
import { VsockError } from "./errors.ts";

/** Accepts connections on one local port. */
export class VsockListener implements AsyncIterable<VsockConnection> {
  readonly port: number;
  /** `TYPE.STREAM` or `TYPE.SEQPACKET`. */
  readonly type: number;
  readonly backlog: number;
  #queue: VsockConnection[] = [];
  #waiters: Array<
    { resolve: (c: VsockConnection) => void; reject: (e: unknown) => void }
  > = [];
  #closed = false;
  #onClose: (l: VsockListener) => void;

  constructor(
    port: number,
    type: number,
    backlog: number,
    onClose: (l: VsockListener) => void,
  ) {
    this.port = port;
    this.type = type;
    this.backlog = backlog;
    this.#onClose = onClose;
  }

  /** Whether another connection fits in the backlog. */
  get full(): boolean {
    return this.#queue.length >= this.backlog;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Called by the engine with a connection it just answered. */
  offer(conn: VsockConnection): void {
    const waiter = this.#waiters.shift();
    if (waiter !== undefined) waiter.resolve(conn);
    else this.#queue.push(conn);
  }

  /**
   * The next connection. Rejects with ECONNABORTED once the listener is
   * closed.
   */
  accept(): Promise<VsockConnection> {
    for (;;) {
      const next = this.#queue.shift();
      if (next === undefined) break;
      // A connection the peer already reset while queued is skipped.
      if (next.state !== "closed") return Promise.resolve(next);
    }
    if (this.#closed) {
      return Promise.reject(
        new VsockError(
          "ECONNABORTED",
          `listener on port ${this.port} is closed`,
        ),
      );
    }
    return new Promise((resolve, reject) =>
      this.#waiters.push({ resolve, reject })
    );
  }

  async *[Symbol.asyncIterator](): AsyncIterator<VsockConnection> {
    for (;;) {
      try {
        yield await this.accept();
      } catch (err) {
        if (this.#closed) return;
        throw err;
      }
    }
  }

  /** Stops listening; connections not yet accepted are reset. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const c of this.#queue) c.reset("listener closed before accept");
    this.#queue = [];
    const err = new VsockError(
      "ECONNABORTED",
      `listener on port ${this.port} is closed`,
    );
    for (const w of this.#waiters) w.reject(err);
    this.#waiters = [];
    this.#onClose(this);
  }
}
