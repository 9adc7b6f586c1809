/**
 * A soak service: a loopback TCP server answering checked transfers, whose
 * sessions the soak matches to its clients by connection id. It uses
 * `node:net`, whose sockets can be reset (RST), for the resets it injects. A session that
 * ends before a whole header arrived cannot be matched; it is counted, and
 * a client that reset its connection early may claim one.
 *
 * @module
 */

import { createServer, type Server, type Socket } from "node:net";
import {
  type Outcome,
  type Pattern,
  runService,
  socketChannel,
} from "../_support/checked_transfer.ts";

/** The far end of the soak's connections on one side. */
export class SoakService {
  readonly port: number;
  /** Sessions that ended before their header: not matched to a client. */
  headerless = 0;
  #server: Server;
  #sessions = new Set<Promise<void>>();
  #sockets = new Set<Socket>();
  #open = 0;
  #waiting = new Map<number, (o: Outcome) => void>();
  #early = new Map<number, Outcome>();

  private constructor(server: Server, port: number) {
    this.#server = server;
    this.port = port;
  }

  /** Listens on a free loopback port. */
  static async start(pattern: Pattern, stallMs: number): Promise<SoakService> {
    let service: SoakService | null = null;
    const server = createServer((socket) => {
      const s = service!;
      s.#sockets.add(socket);
      const session = s.#session(socket, pattern, stallMs).finally(() => {
        s.#sockets.delete(socket);
        s.#sessions.delete(session);
      });
      s.#sessions.add(session);
    });
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(0, "127.0.0.1", () => resolve());
    });
    service = new SoakService(
      server,
      (server.address() as { port: number }).port,
    );
    return service;
  }

  async #session(
    socket: Socket,
    pattern: Pattern,
    stallMs: number,
  ): Promise<void> {
    this.#open++;
    try {
      const { spec, outcome } = await runService(
        socketChannel(socket),
        pattern,
        { stallMs },
      );
      if (spec === null) {
        this.headerless++;
        return;
      }
      const waiter = this.#waiting.get(spec.id);
      if (waiter !== undefined) {
        this.#waiting.delete(spec.id);
        waiter(outcome);
      } else this.#early.set(spec.id, outcome);
    } finally {
      this.#open--;
    }
  }

  /** Sessions open now. */
  get open(): number {
    return this.#open;
  }

  /**
   * How the session of connection `id` ended (ask once its client is done),
   * or null if none ended within `timeoutMs`: it never got its header, or it
   * is stuck.
   */
  outcome(id: number, timeoutMs: number): Promise<Outcome | null> {
    const early = this.#early.get(id);
    if (early !== undefined) {
      this.#early.delete(id);
      return Promise.resolve(early);
    }
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        // Given up on: drop it when it does end, rather than keep it.
        this.#waiting.set(id, () => {});
        resolve(null);
      }, timeoutMs);
      this.#waiting.set(id, (o) => {
        clearTimeout(timer);
        resolve(o);
      });
    });
  }

  /** Claims one headerless session (for a client that reset early). */
  claimHeaderless(): boolean {
    if (this.headerless === 0) return false;
    this.headerless--;
    return true;
  }

  /** Stops listening and ends every session. */
  async close(): Promise<void> {
    const closed = new Promise<void>((r) => this.#server.close(() => r()));
    for (const socket of this.#sockets) socket.destroy();
    await Promise.allSettled([...this.#sessions]);
    await closed;
  }
}
