/**
 * Serves QEMU's ivshmem server protocol (`docs/specs/ivshmem-spec.rst`) on
 * a unix socket, so that `-device ivshmem-doorbell,chardev=...` attaches
 * to ivsock directly. See `docs/ivshmem-server.md`.
 *
 * ivsock is a virtual peer with id 0: it owns one eventfd per vector
 * ({@linkcode IvshmemServer.deviceVectors}), handed to every client, so a
 * guest doorbell write of `(0 << 16) | v` signals `deviceVectors[v]`. Real
 * clients get ids from 1. For each client the server creates and keeps its
 * receive eventfds, so ivsock can interrupt it with
 * {@linkcode IvshmemServer.ring}.
 *
 * One loop owns the sockets: a single `poll()` on a worker thread over the
 * listening socket, every client and a private wake-up eventfd (which
 * close() signals). Sends that find a full socket buffer queue the message,
 * with a duplicate of its descriptor, and finish when the socket drains.
 *
 * @module
 */

import {
  ECONNRESET,
  EPIPE,
  F_DUPFD_CLOEXEC,
  libc,
  POLLERR,
  POLLHUP,
  POLLIN,
  POLLNVAL,
  pollOnce,
  POLLOUT,
  type PollRequest,
  SEEK_END,
} from "../shm/_libc.ts";
import { checkRegionSize } from "../shm/region.ts";
import { EventFd } from "./eventfd.ts";
import {
  acceptUnix,
  discardInput,
  listenUnix,
  removeStaleSocket,
  sendMessage,
  SocketError,
} from "./_unix_socket.ts";

/** The only protocol version QEMU accepts (hw/misc/ivshmem.c has the same name). */
export const IVSHMEM_PROTOCOL_VERSION = 0;

/** contrib/ivshmem-server's limit (IVSHMEM_SERVER_MAX_VECTORS). */
export const IVSHMEM_MAX_VECTORS = 64;

/** The doorbell's target field is 16 bits wide. */
export const IVSHMEM_MAX_PEER_ID = 0xffff;

/** Clients served at once unless `maxClients` says otherwise. */
export const IVSHMEM_DEFAULT_MAX_CLIENTS = 8;

/** Peer id of ivsock itself. */
const DEVICE_PEER_ID = 0;

/** The message that carries the shared-memory descriptor. */
const SHM_MESSAGE = -1;

/** The id sent to a refused client: negative, so every client rejects it. */
const REFUSED_ID = -1;

/** Longest poll before the loop looks at its state again. */
const POLL_SLICE_MS = 250;

/**
 * Unread messages a client may have queued beyond the largest possible
 * handshake (3 + vectors * (maxClients + 1)) before it is dropped. They are
 * announcements, each from a peer arriving or leaving, so a client this far
 * behind is not reading at all.
 */
const MAX_QUEUED_ANNOUNCEMENTS = 1024;

/** Listen backlog; connections beyond `maxClients` are refused anyway. */
const LISTEN_BACKLOG = 16;

/** What {@linkcode IvshmemServer} reports through `onEvent`. */
export type IvshmemServerEvent =
  | { type: "connect"; id: number }
  | { type: "disconnect"; id: number }
  | { type: "log"; message: string };

/** Options for {@linkcode IvshmemServer.listen}. */
export interface IvshmemServerOptions {
  /** Unix socket path (at most 107 bytes); a stale socket file is replaced. */
  path: string;
  /**
   * Descriptor of the shared memory (a `/dev/shm` file). The server keeps
   * its own duplicate, so the caller may close this one. Its size becomes
   * the guest's BAR2 size and must be a power of two from 4 KiB to 2 GiB.
   */
  shmFd: number;
  /** Interrupt vectors per peer, 1 to 64; match QEMU's `vectors=`. */
  vectors: number;
  /** @default {8} */
  maxClients?: number;
  /**
   * Connects, disconnects and log lines (refusals, dropped clients). Runs
   * on the server loop; an exception is passed to `reportError`.
   */
  onEvent?: (event: IvshmemServerEvent) => void;
}

interface Client {
  id: number;
  socket: number;
  /** The client's receive eventfds: what ring() signals. */
  vectors: EventFd[];
  /** Unsent messages; each `fd` is a duplicate owned by the queue, or -1. */
  queue: { value: number; fd: number }[];
  /**
   * Set when the client must go: "" for an ordinary hang-up, else the
   * reason to log. The loop removes it after the current pass.
   */
  failure?: string;
}

/** An ivshmem server with ivsock as peer 0. */
export class IvshmemServer {
  /** Peer 0's eventfds: a doorbell write for vector v signals entry v. */
  readonly deviceVectors: readonly EventFd[];
  /** The socket path being served. */
  readonly path: string;
  /** Vectors per peer. */
  readonly vectors: number;
  #listenFd: number;
  #socketIno: number | null;
  #shmFd: number;
  #maxClients: number;
  #queueLimit: number;
  #onEvent: ((event: IvshmemServerEvent) => void) | undefined;
  #clients = new Map<number, Client>();
  #nextId = 1;
  /** Signalled by close() to end the loop's poll at once. */
  #wake: EventFd;
  #closing = false;
  #closed: Promise<void> | undefined;
  #loop: Promise<void>;
  #scratch = new Uint8Array(256);

  private constructor(
    options: IvshmemServerOptions,
    owned: {
      listenFd: number;
      socketIno: number | null;
      shmFd: number;
      deviceVectors: EventFd[];
      wake: EventFd;
    },
  ) {
    this.path = options.path;
    this.vectors = options.vectors;
    this.#maxClients = options.maxClients ?? IVSHMEM_DEFAULT_MAX_CLIENTS;
    this.#queueLimit = 3 + this.vectors * (this.#maxClients + 1) +
      MAX_QUEUED_ANNOUNCEMENTS;
    this.#onEvent = options.onEvent;
    this.#listenFd = owned.listenFd;
    this.#socketIno = owned.socketIno;
    this.#shmFd = owned.shmFd;
    this.deviceVectors = owned.deviceVectors;
    this.#wake = owned.wake;
    this.#loop = this.#run();
  }

  /**
   * Starts serving on `options.path`.
   *
   * @example Attach QEMU with two vectors
   * ```ts ignore
   * const shm = mapFile("/dev/shm/ivsock", { mode: "create", size: 1 << 22 });
   * const server = await IvshmemServer.listen({
   *   path: "/tmp/ivsock.sock",
   *   shmFd: shm.fd,
   *   vectors: 2,
   *   onEvent: (e) => console.log(e),
   * });
   * // qemu-system-x86_64 ... -chardev socket,path=/tmp/ivsock.sock,id=iv
   * //   -device ivshmem-doorbell,chardev=iv,vectors=2
   * const doorbell = server.deviceVectors[0]!;
   * if (await doorbell.wait(1000)) {
   *   console.log(`the guest rang vector 0 ${doorbell.drain()} times`);
   * }
   * ```
   *
   * @throws {RangeError} if `vectors` is not an integer from 1 to 64,
   * `maxClients` not one from 1 to 65535, the path is too long, or the shm
   * size is not a power of two from 4 KiB to 2 GiB.
   * @throws {Error} if the path exists and a server answers there, or it is
   * not a socket, or the socket cannot be created.
   */
  static async listen(options: IvshmemServerOptions): Promise<IvshmemServer> {
    const { vectors, maxClients = IVSHMEM_DEFAULT_MAX_CLIENTS } = options;
    if (
      !Number.isInteger(vectors) || vectors < 1 || vectors > IVSHMEM_MAX_VECTORS
    ) {
      throw new RangeError(
        `IvshmemServer vectors must be an integer from 1 to ${IVSHMEM_MAX_VECTORS}, received ${vectors}`,
      );
    }
    if (
      !Number.isInteger(maxClients) || maxClients < 1 ||
      maxClients > IVSHMEM_MAX_PEER_ID
    ) {
      throw new RangeError(
        `IvshmemServer maxClients must be an integer from 1 to ${IVSHMEM_MAX_PEER_ID}, received ${maxClients}`,
      );
    }
    const shmFd = duplicateShm(options.shmFd);
    const eventfds: EventFd[] = [];
    let listenFd = -1;
    try {
      for (let v = 0; v <= vectors; v++) eventfds.push(EventFd.create());
      removeStaleSocket(options.path);
      listenFd = listenUnix(options.path, LISTEN_BACKLOG);
      return new IvshmemServer(options, {
        listenFd,
        // Remembered so close() removes the file only if it is still ours.
        socketIno: Deno.lstatSync(options.path).ino,
        shmFd,
        deviceVectors: eventfds.slice(0, vectors),
        wake: eventfds[vectors]!,
      });
    } catch (err) {
      await Promise.all(eventfds.map((e) => e.close()));
      libc().close(shmFd);
      if (listenFd >= 0) {
        libc().close(listenFd);
        Deno.removeSync(options.path);
      }
      throw err;
    }
  }

  /** Ids of the connected clients, ascending. */
  get clients(): number[] {
    return [...this.#clients.keys()].sort((a, b) => a - b);
  }

  /**
   * Interrupts client `clientId` on `vector`. Returns false if no such
   * client is connected (it may just have left).
   *
   * @throws {RangeError} if `vector` is not an integer below `vectors`.
   */
  ring(clientId: number, vector: number): boolean {
    if (!Number.isInteger(vector) || vector < 0 || vector >= this.vectors) {
      throw new RangeError(
        `Cannot ring a client: vector must be an integer from 0 to ${
          this.vectors - 1
        }, received ${vector}`,
      );
    }
    const client = this.#clients.get(clientId);
    if (client === undefined || this.#closing) return false;
    client.vectors[vector]!.signal();
    return true;
  }

  /**
   * Stops serving: ends the loop, closes every client and eventfd (a
   * pending `deviceVectors[v].wait()` resolves false) and the listening
   * socket, and removes the socket file if it is still the one this server
   * created. Idempotent.
   */
  close(): Promise<void> {
    this.#closed ??= this.#close();
    return this.#closed;
  }

  /** Same as {@linkcode IvshmemServer.close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  async #close(): Promise<void> {
    this.#closing = true;
    this.#wake.signal();
    await this.#loop;
    const c = libc();
    for (const client of this.#clients.values()) await this.#release(client);
    this.#clients.clear();
    await Promise.all(this.deviceVectors.map((e) => e.close()));
    await this.#wake.close();
    c.close(this.#listenFd);
    c.close(this.#shmFd);
    try {
      // Another server may have replaced a file we no longer own.
      if (Deno.lstatSync(this.path).ino === this.#socketIno) {
        Deno.removeSync(this.path);
      }
    } catch (err) {
      if (!(err instanceof Deno.errors.NotFound)) throw err;
    }
  }

  async #run(): Promise<void> {
    let backoff = false;
    while (!this.#closing) {
      const clients = [...this.#clients.values()];
      const requests: PollRequest[] = [{ fd: this.#wake.fd, events: POLLIN }];
      if (!backoff) {
        requests.push({ fd: this.#listenFd, events: POLLIN });
        for (const c of clients) {
          requests.push({
            fd: c.socket,
            events: POLLIN | (c.queue.length > 0 ? POLLOUT : 0),
          });
        }
      }
      const revents = await pollOnce(requests, POLL_SLICE_MS);
      if (this.#closing) break;
      if (backoff) {
        backoff = false;
        continue;
      }
      try {
        this.#wake.drain();
        clients.forEach((c, i) => this.#service(c, revents[i + 2] ?? 0));
        if ((revents[1] ?? 0) & POLLIN) this.#acceptAll();
        for (const client of [...this.#clients.values()]) {
          if (client.failure !== undefined) {
            await this.#disconnect(client, client.failure);
          }
        }
      } catch (err) {
        // Keep serving, but give a persistent failure (EMFILE on accept,
        // say) one slice to clear rather than spinning on it.
        this.#log(`ivshmem server loop failed, pausing: ${message(err)}`);
        backoff = true;
      }
    }
  }

  #service(client: Client, revents: number): void {
    if (client.failure !== undefined) return;
    if (revents & POLLOUT) this.#flush(client);
    if (revents & POLLIN) {
      let got: number;
      try {
        got = discardInput(client.socket, this.#scratch);
      } catch (err) {
        client.failure = message(err);
        return;
      }
      // QEMU sends nothing after connecting, so bytes mean a confused or
      // hostile client; end of stream is an ordinary disconnect.
      if (got > 0) client.failure = `it sent ${got} unexpected bytes`;
      else if (got === 0) client.failure = "";
    } else if (revents & (POLLHUP | POLLERR | POLLNVAL)) {
      client.failure = "";
    }
  }

  #acceptAll(): void {
    while (true) {
      const socket = acceptUnix(this.#listenFd);
      if (socket < 0) return;
      if (this.#clients.size >= this.#maxClients) {
        refuse(socket);
        this.#log(
          `Refused an ivshmem client on ${this.path}: already serving ${this.#clients.size} clients (maxClients ${this.#maxClients})`,
        );
        continue;
      }
      this.#admit(socket);
    }
  }

  #admit(socket: number): void {
    const id = this.#allocateId();
    const vectors: EventFd[] = [];
    try {
      for (let v = 0; v < this.vectors; v++) vectors.push(EventFd.create());
    } catch (err) {
      for (const e of vectors) void e.close();
      refuse(socket);
      throw err;
    }
    const client: Client = { id, socket, vectors, queue: [] };
    // Protocol order: version, own id, shm, every existing peer's
    // eventfds (peer 0 first), then the client's own.
    this.#send(client, IVSHMEM_PROTOCOL_VERSION, -1);
    this.#send(client, id, -1);
    this.#send(client, SHM_MESSAGE, this.#shmFd);
    this.#sendVectors(client, DEVICE_PEER_ID, this.deviceVectors);
    for (const peer of this.#clients.values()) {
      this.#sendVectors(client, peer.id, peer.vectors);
      this.#sendVectors(peer, id, vectors);
    }
    this.#sendVectors(client, id, vectors);
    this.#clients.set(id, client);
    this.#emit({ type: "connect", id });
  }

  /** The next id after the last one given, skipping ids in use. */
  #allocateId(): number {
    // Fewer than maxClients <= 65535 clients are connected when this runs,
    // so one of the ids 1..65535 is free.
    while (this.#clients.has(this.#nextId)) this.#advanceId();
    const id = this.#nextId;
    this.#advanceId();
    return id;
  }

  #advanceId(): void {
    this.#nextId = this.#nextId >= IVSHMEM_MAX_PEER_ID ? 1 : this.#nextId + 1;
  }

  #sendVectors(to: Client, peerId: number, vectors: readonly EventFd[]) {
    for (const e of vectors) this.#send(to, peerId, e.fd);
  }

  /** Sends now if nothing is queued ahead, else queues a copy. */
  #send(client: Client, value: number, fd: number): void {
    if (client.failure !== undefined) return;
    if (client.queue.length === 0) {
      try {
        if (sendMessage(client.socket, BigInt(value), fd)) return;
      } catch (err) {
        client.failure = sendFailure(err);
        return;
      }
    }
    if (client.queue.length >= this.#queueLimit) {
      client.failure =
        `it left ${this.#queueLimit} messages unread (not reading)`;
      return;
    }
    // The original may be closed (a peer leaving) before this is sent.
    client.queue.push({ value, fd: fd === -1 ? -1 : duplicate(fd) });
  }

  #flush(client: Client): void {
    while (client.queue.length > 0) {
      const { value, fd } = client.queue[0]!;
      try {
        if (!sendMessage(client.socket, BigInt(value), fd)) return;
      } catch (err) {
        client.failure = sendFailure(err);
        return;
      }
      if (fd !== -1) libc().close(fd);
      client.queue.shift();
    }
  }

  /** Removes a client, tells the others, and reports why if it misbehaved. */
  async #disconnect(client: Client, why: string): Promise<void> {
    this.#clients.delete(client.id);
    await this.#release(client);
    if (why !== "") {
      this.#log(`Dropped ivshmem client ${client.id}: ${why}`);
    }
    // An id without a descriptor tells a peer that id has gone.
    for (const peer of this.#clients.values()) this.#send(peer, client.id, -1);
    this.#emit({ type: "disconnect", id: client.id });
  }

  async #release(client: Client): Promise<void> {
    const c = libc();
    c.close(client.socket);
    for (const { fd } of client.queue) if (fd !== -1) c.close(fd);
    client.queue = [];
    await Promise.all(client.vectors.map((e) => e.close()));
  }

  #log(message: string): void {
    this.#emit({ type: "log", message });
  }

  #emit(event: IvshmemServerEvent): void {
    if (this.#onEvent === undefined) return;
    try {
      this.#onEvent(event);
    } catch (err) {
      reportError(err);
    }
  }
}

/**
 * Turns a client away with a handshake it must reject: the version, then an
 * id that cannot be valid. QEMU then fails the device with "server sent
 * invalid ID message". Closing without a word is worse: QEMU 7.2 reads the
 * handshake in a loop that spins forever on a closed socket.
 */
function refuse(socket: number): void {
  try {
    sendMessage(socket, BigInt(IVSHMEM_PROTOCOL_VERSION), -1);
    sendMessage(socket, BigInt(REFUSED_ID), -1);
  } catch {
    // It has already gone, which is what closing it would achieve anyway.
  }
  libc().close(socket);
}

/**
 * Checks the shm size QEMU will see (BAR2 = st_size, a power of two) and
 * returns a close-on-exec duplicate the server owns.
 */
function duplicateShm(fd: number): number {
  if (!Number.isInteger(fd) || fd < 0) {
    throw new TypeError(
      `IvshmemServer shmFd must be a non-negative integer, received ${fd}`,
    );
  }
  const size = libc().lseek(fd, 0n, SEEK_END);
  if (size < 0n) {
    throw new TypeError(
      `IvshmemServer shmFd must be an open file with a size, received fd ${fd}`,
    );
  }
  checkRegionSize(Number(size));
  return duplicate(fd);
}

function duplicate(fd: number): number {
  const copy = libc().fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (copy < 0) throw new Error(`Cannot duplicate fd ${fd}`);
  return copy;
}

/** A peer that hung up mid-send has simply left; anything else is logged. */
function sendFailure(err: unknown): string {
  const gone = err instanceof SocketError &&
    (err.errno === EPIPE || err.errno === ECONNRESET);
  return gone ? "" : message(err);
}

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
