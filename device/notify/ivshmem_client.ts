/**
 * A client of QEMU's ivshmem server protocol (`docs/specs/ivshmem-spec.rst`)
 * for a simulated guest: a plain process that attaches to ivsock's
 * {@linkcode IvshmemServer} the way QEMU's `ivshmem-doorbell` device does,
 * so tests and benchmarks can exercise doorbell mode without a VM.
 *
 * Like QEMU (and `contrib/ivshmem-client`), it reads the handshake once on
 * connect: version 0, its own id, the shared memory, then every peer's
 * eventfds and finally its own. Everything the server sends is checked
 * before it is used, and a bad handshake closes every descriptor received.
 *
 * After the handshake a poll on a worker thread follows the server's
 * announcements: an id with an eventfd is a peer arriving (one message per
 * vector), an id without one a peer leaving. Like QEMU, the client keeps
 * the memory and eventfds it holds when the server goes away.
 *
 * @module
 */

import { checkRegionSize } from "../shm/region.ts";
import { libc, POLLIN, pollOnce, SEEK_END } from "../shm/_libc.ts";
import { EventFd } from "./eventfd.ts";
import {
  IVSHMEM_MAX_PEER_ID,
  IVSHMEM_MAX_VECTORS,
  IVSHMEM_PROTOCOL_VERSION,
} from "./ivshmem_server.ts";
import {
  connectUnix,
  type ReceivedMessage,
  receiveMessage,
} from "./_unix_socket.ts";

/** The value that carries the shared-memory descriptor. */
const SHM_MESSAGE = -1n;

/** How long connect() waits for the whole handshake unless told otherwise. */
const DEFAULT_TIMEOUT_MS = 5000;

/**
 * Longest single poll of the socket. close() wakes the reader at once
 * through a private eventfd, so this only bounds how long a poll lives.
 */
const POLL_SLICE_MS = 1000;

/**
 * The client could not attach: nobody listens, the server refused it, broke
 * the protocol, hung up or stalled mid-handshake. `cause` holds the socket
 * or descriptor error where there was one.
 */
export class IvshmemAttachError extends Error {
  override name = "IvshmemAttachError";
}

/** What {@linkcode IvshmemClient} reports after the handshake. */
export type IvshmemClientEvent =
  /** A peer's last eventfd arrived: it can be rung now. */
  | { type: "connect"; id: number }
  /** A peer left; its eventfds are closed. */
  | { type: "disconnect"; id: number }
  /** The server hung up; the memory and eventfds keep working. */
  | { type: "closed"; reason: string }
  /** A message that breaks the protocol was ignored. */
  | { type: "log"; message: string };

/** Options for {@linkcode IvshmemClient.connect}. */
export interface IvshmemClientOptions {
  /** Longest wait for the whole handshake, in ms. @default {5000} */
  timeoutMs?: number;
  /**
   * Vectors per peer, as QEMU's `vectors=` (1 to 64). By default it is
   * learned from the first peer's eventfds, which needs a server that
   * announces another peer before the client (ivsock's, with its peer 0).
   */
  vectors?: number;
  /** Announcements after the handshake; an exception goes to `reportError`. */
  onEvent?: (event: IvshmemClientEvent) => void;
}

/** One attachment to an ivshmem server, as a guest's device would have. */
export class IvshmemClient {
  /** Our peer id (what a guest reads from IVPosition). */
  readonly id: number;
  /** The socket path connected to. */
  readonly path: string;
  /** Our own eventfds, one per vector: a peer ringing us signals these. */
  readonly vectors: readonly EventFd[];
  /** Every other peer's eventfds, one per vector, by peer id. */
  readonly peers: ReadonlyMap<number, readonly EventFd[]>;
  #peers: Map<number, EventFd[]>;
  /** Eventfds of peers whose announcement is not complete yet. */
  #arriving = new Map<number, EventFd[]>();
  #socket: number;
  #shmFd: number;
  #onEvent: ((event: IvshmemClientEvent) => void) | undefined;
  #wake: EventFd;
  #closing = false;
  #serverGone = false;
  #closed: Promise<void> | undefined;
  #reader: Promise<void>;

  private constructor(
    path: string,
    socket: number,
    handshake: Handshake,
    wake: EventFd,
    onEvent: ((event: IvshmemClientEvent) => void) | undefined,
  ) {
    this.path = path;
    this.#socket = socket;
    this.id = handshake.id;
    this.#shmFd = handshake.shmFd;
    this.vectors = handshake.own;
    this.#peers = handshake.peers;
    this.peers = this.#peers;
    this.#wake = wake;
    this.#onEvent = onEvent;
    this.#reader = this.#read();
  }

  /**
   * Connects to the server at `path` and reads the whole handshake.
   *
   * @example Ring ivsock (peer 0) on vector 1 and wait to be rung back
   * ```ts ignore
   * await using client = await IvshmemClient.connect("/tmp/ivsock.sock");
   * client.ring(0, 1);
   * if (await client.vectors[1]!.wait(1000)) client.vectors[1]!.drain();
   * ```
   *
   * @throws {RangeError} if `timeoutMs` is negative or `vectors` is not an
   * integer from 1 to 64.
   * @throws {IvshmemAttachError} if the connection fails, the server
   * refuses the client (id -1, as ivsock's does when full), sends anything
   * the protocol does not allow (another version, an id out of range, no
   * or several descriptors, a descriptor that is not an eventfd, memory
   * that is not a power of two from 4 KiB to 2 GiB, a peer with the wrong
   * number of eventfds), hangs up, or does not finish within `timeoutMs`.
   */
  static async connect(
    path: string,
    options: IvshmemClientOptions = {},
  ): Promise<IvshmemClient> {
    const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    if (!(timeoutMs >= 0)) {
      throw new RangeError(
        `IvshmemClient timeoutMs must be a non-negative number, received ${timeoutMs}`,
      );
    }
    const vectors = options.vectors;
    if (
      vectors !== undefined &&
      (!Number.isInteger(vectors) || vectors < 1 ||
        vectors > IVSHMEM_MAX_VECTORS)
    ) {
      throw new RangeError(
        `IvshmemClient vectors must be an integer from 1 to ${IVSHMEM_MAX_VECTORS}, received ${vectors}`,
      );
    }
    let socket: number;
    try {
      socket = connectUnix(path);
    } catch (err) {
      throw new IvshmemAttachError(
        `Cannot connect to the ivshmem server at ${path}`,
        { cause: err },
      );
    }
    const reader = new HandshakeReader(path, socket, timeoutMs);
    let wake: EventFd | undefined;
    try {
      wake = EventFd.create();
      const handshake = await reader.read(vectors);
      return new IvshmemClient(path, socket, handshake, wake, options.onEvent);
    } catch (err) {
      reader.abandon();
      await wake?.close();
      libc().close(socket);
      throw err;
    }
  }

  /**
   * The shared-memory descriptor, -1 once handed off with
   * {@linkcode IvshmemClient.takeShmFd} or closed.
   */
  get shmFd(): number {
    return this.#shmFd;
  }

  /** Whether the server has hung up (the client keeps working without it). */
  get serverGone(): boolean {
    return this.#serverGone;
  }

  /**
   * Hands the shared-memory descriptor to the caller (for `mapFd`, which
   * then owns it); close() no longer closes it.
   *
   * @throws {Error} if it was already taken or the client is closed.
   */
  takeShmFd(): number {
    const fd = this.#shmFd;
    if (fd < 0) {
      throw new Error(
        `Cannot take the shared-memory descriptor of ivshmem client ${this.id}: it was already taken or closed`,
      );
    }
    this.#shmFd = -1;
    return fd;
  }

  /**
   * Interrupts peer `peerId` on `vector`, as a guest's doorbell write of
   * `(peerId << 16) | vector` does. Returns false if no such peer is known
   * (it may just have left) or the client is closed.
   *
   * @throws {RangeError} if `vector` is not an integer below the vector
   * count.
   */
  ring(peerId: number, vector: number): boolean {
    if (
      !Number.isInteger(vector) || vector < 0 || vector >= this.vectors.length
    ) {
      throw new RangeError(
        `Cannot ring a peer: vector must be an integer from 0 to ${
          this.vectors.length - 1
        }, received ${vector}`,
      );
    }
    const target = this.#peers.get(peerId);
    if (target === undefined || this.#closing) return false;
    target[vector]!.signal();
    return true;
  }

  /**
   * Disconnects: stops the reader, then closes the socket, every eventfd
   * (ours and the peers') and the shared-memory descriptor unless it was
   * taken. Stop anything polling our eventfds first. Idempotent.
   */
  close(): Promise<void> {
    this.#closed ??= this.#close();
    return this.#closed;
  }

  /** Same as {@linkcode IvshmemClient.close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  async #close(): Promise<void> {
    this.#closing = true;
    this.#wake.signal();
    await this.#reader;
    await this.#wake.close();
    const c = libc();
    c.close(this.#socket);
    if (this.#shmFd >= 0) c.close(this.#shmFd);
    this.#shmFd = -1;
    const all = [...this.#peers.values(), ...this.#arriving.values()];
    this.#peers.clear();
    this.#arriving.clear();
    await Promise.all([...all, this.vectors].flat().map((e) => e.close()));
  }

  async #read(): Promise<void> {
    const requests = [
      { fd: this.#wake.fd, events: POLLIN },
      { fd: this.#socket, events: POLLIN },
    ];
    while (!this.#closing && !this.#serverGone) {
      const [, revents = 0] = await pollOnce(requests, POLL_SLICE_MS);
      if (this.#closing) return;
      if (revents !== 0) this.#drainAnnouncements();
    }
  }

  #drainAnnouncements(): void {
    while (!this.#serverGone) {
      let got: ReceivedMessage | "again" | "eof";
      try {
        got = receiveMessage(this.#socket);
      } catch (err) {
        this.#hangUp(err instanceof Error ? err.message : String(err));
        return;
      }
      if (got === "again") return;
      if (got === "eof") {
        this.#hangUp("the server closed the connection");
        return;
      }
      const problem = this.#announce(got);
      if (problem !== null) {
        for (const fd of got.fds) libc().close(fd);
        this.#emit({
          type: "log",
          message:
            `Ignored a message from the ivshmem server at ${this.path}: ${problem}`,
        });
      }
    }
  }

  /** Applies one announcement; returns why it was refused, or null. */
  #announce({ value, fds }: ReceivedMessage): string | null {
    if (value < 0n || value > BigInt(IVSHMEM_MAX_PEER_ID)) {
      return `expected a peer id from 0 to ${IVSHMEM_MAX_PEER_ID}, received ${value}`;
    }
    const id = Number(value);
    if (id === this.id) return `it names our own id ${id}`;
    if (fds.length === 0) {
      const gone = this.#peers.get(id) ?? this.#arriving.get(id);
      if (gone === undefined) return `peer ${id} left but was never announced`;
      this.#peers.delete(id);
      this.#arriving.delete(id);
      for (const e of gone) void e.close();
      this.#emit({ type: "disconnect", id });
      return null;
    }
    if (fds.length > 1) return `peer ${id} came with ${fds.length} descriptors`;
    if (this.#peers.has(id)) {
      return `peer ${id} already has all ${this.vectors.length} eventfds`;
    }
    let eventFd: EventFd;
    try {
      eventFd = EventFd.fromFd(fds[0]!);
    } catch (err) {
      return err instanceof Error ? err.message : String(err);
    }
    const arriving = this.#arriving.get(id) ?? [];
    arriving.push(eventFd);
    if (arriving.length < this.vectors.length) {
      this.#arriving.set(id, arriving);
      return null;
    }
    this.#arriving.delete(id);
    this.#peers.set(id, arriving);
    this.#emit({ type: "connect", id });
    return null;
  }

  #hangUp(reason: string): void {
    this.#serverGone = true;
    this.#emit({ type: "closed", reason });
  }

  #emit(event: IvshmemClientEvent): void {
    if (this.#onEvent === undefined) return;
    try {
      this.#onEvent(event);
    } catch (err) {
      reportError(err);
    }
  }
}

/** What the handshake delivered, all checked. */
interface Handshake {
  id: number;
  shmFd: number;
  own: EventFd[];
  peers: Map<number, EventFd[]>;
}

/**
 * Reads and checks one handshake. Every descriptor it receives is tracked
 * until the handshake is handed over, so abandon() can close them all.
 */
class HandshakeReader {
  #path: string;
  #socket: number;
  #timeoutMs: number;
  #deadline: number;
  #count = 0;
  /** Raw descriptors not yet wrapped in an EventFd. */
  #fds = new Set<number>();
  #eventFds: EventFd[] = [];

  constructor(path: string, socket: number, timeoutMs: number) {
    this.#path = path;
    this.#socket = socket;
    this.#timeoutMs = timeoutMs;
    this.#deadline = performance.now() + timeoutMs;
  }

  async read(vectors: number | undefined): Promise<Handshake> {
    const version = await this.#plain("the protocol version");
    if (version !== BigInt(IVSHMEM_PROTOCOL_VERSION)) {
      throw this.#error(
        `expected protocol version ${IVSHMEM_PROTOCOL_VERSION}, received ${version}`,
      );
    }
    const idValue = await this.#plain("our id");
    if (idValue === -1n) {
      // ivsock's server sends -1 to a client beyond maxClients.
      throw this.#error(
        "the server refused the connection (id -1); it may already serve its maximum number of clients",
      );
    }
    const id = checkPeerId(idValue, () =>
      this.#error(
        `expected our id from 0 to ${IVSHMEM_MAX_PEER_ID}, received ${idValue}`,
      ));
    const shmFd = await this.#shm();

    // Each peer's eventfds arrive together, peer 0 first and ours last
    // (docs/ivshmem-server.md); a run's length is the vector count.
    const peers = new Map<number, EventFd[]>();
    let own: EventFd[] = [];
    let runId = -1;
    let run: EventFd[] = [];
    let count = vectors;
    while (count === undefined || runId !== id || run.length < count) {
      const m = await this.#next();
      const what = `a peer eventfd (message ${this.#count})`;
      if (m.fds.length !== 1) {
        throw this.#error(
          `expected ${what}, received ${m.value} with ${m.fds.length} descriptors`,
        );
      }
      const peer = checkPeerId(m.value, () =>
        this.#error(
          `expected ${what} from 0 to ${IVSHMEM_MAX_PEER_ID}, received id ${m.value}`,
        ));
      if (peer !== runId) {
        if (runId !== -1) {
          if (count === undefined) count = run.length;
          this.#checkRun(runId, run.length, count);
        }
        if (peers.has(peer)) {
          throw this.#error(`peer ${peer}'s eventfds arrived in pieces`);
        }
        if (count === undefined && peer === id) {
          throw this.#error(
            "the server sent our own eventfds first, so the vector count is unknown; pass options.vectors",
          );
        }
        runId = peer;
        run = [];
        if (peer === id) own = run;
        else peers.set(peer, run);
      }
      run.push(this.#eventFd(m.fds[0]!));
      this.#checkRun(peer, run.length, count ?? IVSHMEM_MAX_VECTORS, true);
    }
    // Handed over: the client owns them now.
    this.#fds.clear();
    this.#eventFds = [];
    return { id, shmFd, own, peers };
  }

  /** Closes every descriptor received so far. */
  abandon(): void {
    const c = libc();
    for (const fd of this.#fds) c.close(fd);
    this.#fds.clear();
    // No wait is pending on these, so close() finishes synchronously.
    for (const e of this.#eventFds) void e.close();
    this.#eventFds = [];
  }

  /** Checks a peer's eventfd count: exact once its run ended, else a cap. */
  #checkRun(id: number, got: number, expected: number, partial = false) {
    if (got === expected || (partial && got < expected)) return;
    throw this.#error(
      `expected ${
        partial && expected === IVSHMEM_MAX_VECTORS ? "at most " : ""
      }${expected} eventfds for peer ${id}, received ${
        got > expected ? `more than ${expected}` : got
      }`,
    );
  }

  /** A message that must carry no descriptor. */
  async #plain(what: string): Promise<bigint> {
    const m = await this.#next();
    if (m.fds.length !== 0) {
      throw this.#error(
        `expected ${what} without a descriptor, received ${m.value} with ${m.fds.length}`,
      );
    }
    return m.value;
  }

  async #shm(): Promise<number> {
    const m = await this.#next();
    if (m.value !== SHM_MESSAGE || m.fds.length !== 1) {
      throw this.#error(
        `expected ${SHM_MESSAGE} with the shared-memory descriptor, received ${m.value} with ${m.fds.length} descriptors`,
      );
    }
    const fd = m.fds[0]!;
    const size = libc().lseek(fd, 0n, SEEK_END);
    try {
      // QEMU makes the memory BAR2, which must be a power of two; ivsock
      // maps regions of 4 KiB to 2 GiB.
      checkRegionSize(Number(size));
    } catch (err) {
      throw this.#error(
        `the shared memory must be a power of two from 4 KiB to 2 GiB, received ${
          size < 0n ? "a descriptor without a size" : `${size} bytes`
        }`,
        err,
      );
    }
    return fd;
  }

  #eventFd(fd: number): EventFd {
    let e: EventFd;
    try {
      e = EventFd.fromFd(fd);
    } catch (err) {
      throw this.#error(
        `expected an eventfd, received ${
          Deno.readLinkSync(`/proc/self/fd/${fd}`)
        }`,
        err,
      );
    }
    this.#fds.delete(fd);
    this.#eventFds.push(e);
    return e;
  }

  /** The next message, its descriptors tracked. */
  async #next(): Promise<ReceivedMessage> {
    while (true) {
      let got: ReceivedMessage | "again" | "eof";
      try {
        got = receiveMessage(this.#socket);
      } catch (err) {
        throw this.#error("the connection failed", err);
      }
      if (got === "eof") {
        throw this.#error(
          `the server closed the connection after ${this.#count} messages`,
        );
      }
      if (got !== "again") {
        for (const fd of got.fds) this.#fds.add(fd);
        this.#count++;
        return got;
      }
      const left = this.#deadline - performance.now();
      if (left <= 0) {
        throw this.#error(
          `no complete handshake within ${this.#timeoutMs} ms (${this.#count} messages received)`,
        );
      }
      await pollOnce(
        [{ fd: this.#socket, events: POLLIN }],
        Math.min(left, POLL_SLICE_MS),
      );
    }
  }

  #error(problem: string, cause?: unknown): IvshmemAttachError {
    return new IvshmemAttachError(
      `Cannot attach to the ivshmem server at ${this.#path}: ${problem}`,
      cause === undefined ? {} : { cause },
    );
  }
}

/** `value` as a peer id, or the error `fail` builds. */
function checkPeerId(value: bigint, fail: () => Error): number {
  if (value < 0n || value > BigInt(IVSHMEM_MAX_PEER_ID)) throw fail();
  return Number(value);
}
