/**
 * A test-side ivshmem protocol client: connects like QEMU does, and reads
 * the server's messages with their descriptors, one at a time, without
 * blocking the event loop the server runs on.
 *
 * @module
 */

import {
  libc,
  MAP_SHARED,
  POLLIN,
  pollOnce,
  PROT_READ,
  PROT_WRITE,
  SEEK_END,
} from "../../../device/shm/_libc.ts";
import {
  connectUnix,
  type ReceivedMessage,
  receiveMessage,
} from "../../../device/notify/_unix_socket.ts";

/** What a client learns from its handshake. */
export interface Handshake {
  version: bigint;
  id: number;
  shmFd: number;
  /** Eventfds per peer id, in the order received (own id last). */
  peers: Map<number, number[]>;
  /** The ids in the order their eventfds arrived. */
  order: number[];
}

/** One connection to an ivshmem server. */
export class ProtocolClient {
  readonly socket: number;
  /** Every descriptor received and not yet handed off; closed by close(). */
  #fds = new Set<number>();
  #closed = false;

  private constructor(socket: number) {
    this.socket = socket;
  }

  /** Connects to `path`. */
  static connect(path: string): ProtocolClient {
    return new ProtocolClient(connectUnix(path));
  }

  /**
   * The next message. Rejects on end of stream or after `timeoutMs`.
   */
  async next(timeoutMs = 3000): Promise<ReceivedMessage> {
    const got = await this.#receive(timeoutMs);
    if (got === "eof") throw new Error("Server closed the connection");
    if (got === "timeout") {
      throw new Error(`No message within ${timeoutMs} ms`);
    }
    return got;
  }

  /** Resolves true if the server closes the stream within `timeoutMs`. */
  async closedByServer(timeoutMs = 3000): Promise<boolean> {
    return await this.#receive(timeoutMs) === "eof";
  }

  /** Resolves true if no message arrives within `ms`. */
  async quietFor(ms: number): Promise<boolean> {
    return await this.#receive(ms) === "timeout";
  }

  async #receive(
    timeoutMs: number,
  ): Promise<ReceivedMessage | "eof" | "timeout"> {
    const deadline = performance.now() + timeoutMs;
    while (true) {
      const got = receiveMessage(this.socket);
      if (got !== "again") {
        if (got !== "eof") { for (const fd of got.fds) this.#fds.add(fd); }
        return got;
      }
      const left = deadline - performance.now();
      if (left <= 0) return "timeout";
      await pollOnce(
        [{ fd: this.socket, events: POLLIN }],
        Math.min(left, 100),
      );
    }
  }

  /**
   * Reads a whole handshake: version, id, shm, then `vectors` eventfds for
   * each of `peerCount` existing peers and for itself.
   */
  async handshake(vectors: number, peerCount: number): Promise<Handshake> {
    const version = (await this.next()).value;
    const idMsg = await this.next();
    const shm = await this.next();
    if (shm.value !== -1n || shm.fds.length !== 1) {
      throw new Error(
        `Expected -1 with one fd, received ${shm.value} with ${shm.fds.length}`,
      );
    }
    const peers = new Map<number, number[]>();
    const order: number[] = [];
    for (let i = 0; i < vectors * (peerCount + 1); i++) {
      const m = await this.next();
      if (m.fds.length !== 1) {
        throw new Error(
          `Expected one fd with peer ${m.value}, received ${m.fds.length}`,
        );
      }
      const id = Number(m.value);
      if (!peers.has(id)) {
        peers.set(id, []);
        order.push(id);
      }
      peers.get(id)!.push(m.fds[0]!);
    }
    return {
      version,
      id: Number(idMsg.value),
      shmFd: shm.fds[0]!,
      peers,
      order,
    };
  }

  /** Hands `fd` to the caller (who then closes it). */
  take(fd: number): number {
    if (!this.#fds.delete(fd)) throw new Error(`fd ${fd} is not held`);
    return fd;
  }

  /** Closes the socket and every descriptor still held. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    const c = libc();
    c.close(this.socket);
    for (const fd of this.#fds) c.close(fd);
    this.#fds.clear();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/** `st_size` of a descriptor, through lseek. */
export function fdSize(fd: number): number {
  return Number(libc().lseek(fd, 0n, SEEK_END));
}

/**
 * Maps `fd` shared and read-write, runs `fn` over the bytes, then detaches
 * the buffer (touching it after munmap would crash) and unmaps.
 */
export function withMapping<T>(
  fd: number,
  size: number,
  fn: (bytes: Uint8Array) => T,
): T {
  const c = libc();
  const p = c.mmap(
    null,
    BigInt(size),
    PROT_READ | PROT_WRITE,
    MAP_SHARED,
    fd,
    0n,
  );
  if (p === null || Deno.UnsafePointer.value(p) === 0xffffffffffffffffn) {
    throw new Error(`Cannot map fd ${fd}`);
  }
  const buf = Deno.UnsafePointerView.getArrayBuffer(p, size);
  try {
    return fn(new Uint8Array(buf));
  } finally {
    structuredClone(buf, { transfer: [buf] });
    c.munmap(p, BigInt(size));
  }
}
