/**
 * Checked transfers for the fault tests and the soak: a client and a service
 * that move a known byte stream both ways over one connection and check every
 * byte where it arrives, as it arrives (so a stream cut short is still
 * checked up to where it stopped) and by SHA-256 at its end.
 *
 * Wire format. The client sends a 28-byte header (seven little-endian u32:
 * magic, id, up, down, upAt, downAt, serviceResetAt), then `up` bytes of the
 * pattern starting at `upAt`, their SHA-256 and an acknowledgement byte. The
 * service sends `down` bytes of the pattern starting at `downAt`, their
 * SHA-256 and an acknowledgement byte. The pattern
 * is a seeded random pool read cyclically: no per-byte generation cost, and
 * a corrupted, lost, repeated or misplaced chunk is caught.
 *
 * Endings. After its digest, each side sends one acknowledgement byte once
 * the other's stream (payload and digest) has checked out, and ends its
 * output (TCP half-close) once the other's acknowledgement has arrived; then
 * it expects end of stream. So a side reports `ok` only when its peer has
 * confirmed receiving everything, and a reset on either side, whenever it
 * strikes before both directions are complete, is seen by the other side.
 * (Ending output last also matters over WebSocket, where the guest's end of
 * stream closes the whole socket.) A side told to reset stops once its
 * payload bytes (either way) reach a given count and aborts the connection:
 * an RST through `node:net`'s `resetAndDestroy()` (SO_LINGER 0) on a
 * {@linkcode socketChannel}; on a Deno connection, which cannot set
 * SO_LINGER, it lets unread data pile up for a moment and closes, which is
 * an RST only if unread data is waiting.
 *
 * Outcomes: `ok`; `mismatch` (a byte or the digest differs, or unexpected
 * bytes arrive after the digest); `ended` (the stream stopped early: end of stream, a
 * reset or a write error, the visible result of a reset); `reset` (this side
 * injected the reset); `stalled` (no byte either way for the stall limit).
 *
 * @module
 */

import { createHash } from "node:crypto";
import { connect, type Socket } from "node:net";
import { Prng } from "./prng.ts";

/** "IVST" little-endian: marks a checked transfer's header. */
const MAGIC = 0x54535649;
/** Header bytes: seven u32. */
export const HEADER_BYTES = 28;
/** `serviceResetAt` meaning "never". */
const NEVER = 0xffffffff;
/** The byte each side sends once the other's stream checked out. */
const ACK = 0x06;
/** Bytes per write: one vsock packet's worth. */
const CHUNK = 64 * 1024;
/** How long a resetting side leaves incoming data unread before closing, so the close is an RST. */
const RESET_PILE_UP_MS = 30;

/** What one connection carries. */
export interface TransferSpec {
  id: number;
  /** Bytes from client to service. */
  up: number;
  /** Bytes from service to client. */
  down: number;
  /** Pattern offsets of each direction. */
  upAt: number;
  downAt: number;
  /**
   * The service resets once this many payload bytes have moved (either
   * way); null = never.
   */
  serviceResetAt: number | null;
}

/** How one side of a transfer ended. */
export type Outcome =
  | { kind: "ok"; bytesIn: number; bytesOut: number }
  | { kind: "mismatch"; detail: string; bytesIn: number; bytesOut: number }
  | { kind: "ended"; detail: string; bytesIn: number; bytesOut: number }
  | { kind: "reset"; bytesIn: number; bytesOut: number }
  | { kind: "stalled"; detail: string; bytesIn: number; bytesOut: number };

/** A byte stream as a transfer sees it: TCP, or a WebSocket adapted. */
export interface Channel {
  /** Reads into `buf`; null at end of stream. Throws on a reset. */
  read(buf: Uint8Array): Promise<number | null>;
  /** Writes all of `chunk`. Throws once the stream is broken. */
  write(chunk: Uint8Array): Promise<void>;
  /** Ends our output (TCP FIN); the other direction goes on. */
  closeWrite(): Promise<void>;
  /** Closes everything (an RST if unread data is waiting). */
  close(): void;
  /** Aborts the connection: TCP RST (SO_LINGER 0). Else `close()` is used. */
  reset?(): void;
}

/** A seeded random pool the streams are cut from. */
export class Pattern {
  readonly bytes: Uint8Array;

  constructor(seed: number, size = 4 << 20) {
    this.bytes = new Prng(seed).bytes(size);
  }

  get size(): number {
    return this.bytes.length;
  }

  /** Calls `f` with the pattern from `at` for `n` bytes, in pieces. */
  each(at: number, n: number, f: (piece: Uint8Array) => void): void {
    let pos = at % this.size;
    while (n > 0) {
      const take = Math.min(n, this.size - pos);
      f(this.bytes.subarray(pos, pos + take));
      n -= take;
      pos = (pos + take) % this.size;
    }
  }

  /** True when `chunk` equals the pattern at absolute stream offset `at`. */
  matches(at: number, chunk: Uint8Array): boolean {
    let pos = at % this.size;
    let i = 0;
    while (i < chunk.length) {
      const take = Math.min(chunk.length - i, this.size - pos);
      const want = this.bytes.subarray(pos, pos + take);
      for (let k = 0; k < take; k++) {
        if (chunk[i + k] !== want[k]) return false;
      }
      i += take;
      pos = 0;
    }
    return true;
  }
}

/** A TCP (or UNIX) connection as a {@linkcode Channel}. */
export function connChannel(conn: Deno.Conn): Channel {
  return {
    read: (buf) => conn.read(buf),
    async write(chunk) {
      let at = 0;
      while (at < chunk.length) at += await conn.write(chunk.subarray(at));
    },
    closeWrite: () => conn.closeWrite(),
    close() {
      try {
        conn.close();
      } catch {
        // Closed already.
      }
    },
  };
}

/** Bytes a {@linkcode socketChannel} buffers before pausing its socket. */
const SOCKET_HIGH_WATER = 256 * 1024;

/**
 * A `node:net` socket as a {@linkcode Channel}: unlike a Deno connection it
 * can be reset (`resetAndDestroy()`, an RST whatever is buffered), so the
 * soak's injected resets are real resets. Reading pauses the socket while
 * more than a little waits, so backpressure reaches the sender.
 */
export function socketChannel(socket: Socket): Channel {
  const queue: Uint8Array[] = [];
  let queued = 0;
  let ended = false;
  let failure: Error | null = null;
  // The reading and the writing loop may both wait: wake every waiter.
  const waiters = new Set<() => void>();
  const poke = () => {
    for (const w of waiters) w();
    waiters.clear();
  };
  const event = () => new Promise<void>((r) => waiters.add(r));
  socket.on("data", (b: Uint8Array) => {
    // A copy: nothing promises the chunk's memory is not reused.
    queue.push(new Uint8Array(b));
    queued += b.length;
    if (queued > SOCKET_HIGH_WATER) socket.pause();
    poke();
  });
  socket.on("end", () => {
    ended = true;
    poke();
  });
  socket.on("error", (e: Error) => {
    failure ??= e;
    poke();
  });
  socket.on("close", () => {
    ended = true;
    poke();
  });
  socket.on("drain", poke);
  return {
    async read(buf) {
      while (queue.length === 0) {
        if (failure !== null) throw failure;
        if (ended) return null;
        await event();
      }
      const head = queue[0]!;
      const n = Math.min(buf.length, head.length);
      buf.set(head.subarray(0, n));
      if (n === head.length) queue.shift();
      else queue[0] = head.subarray(n);
      queued -= n;
      if (queued <= SOCKET_HIGH_WATER / 2 && socket.isPaused()) socket.resume();
      return n;
    },
    async write(chunk) {
      if (failure !== null) throw failure;
      if (socket.destroyed || socket.writableEnded) {
        throw new Error("the socket no longer writes");
      }
      if (!socket.write(chunk)) {
        while (
          socket.writableNeedDrain && failure === null && !socket.destroyed
        ) {
          await event();
        }
        if (failure !== null) throw failure;
        if (socket.destroyed) throw new Error("the socket was closed");
      }
    },
    closeWrite() {
      socket.end();
      return Promise.resolve();
    },
    close() {
      socket.destroy();
    },
    reset() {
      socket.resetAndDestroy();
    },
  };
}

/** Connects a `node:net` socket to 127.0.0.1:`port`, for {@linkcode socketChannel}. */
export function openSocket(port: number, timeoutMs = 10_000): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect({ port, host: "127.0.0.1", noDelay: true });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(
        new Error(`connect to port ${port}: no answer in ${timeoutMs} ms`),
      );
    }, timeoutMs);
    const failed = (e: Error) => {
      clearTimeout(timer);
      reject(e);
    };
    socket.once("error", failed);
    socket.once("connect", () => {
      clearTimeout(timer);
      socket.off("error", failed);
      resolve(socket);
    });
  });
}

/** Options of {@linkcode runClient} and {@linkcode runService}. */
export interface RunOptions {
  /** Fail as `stalled` after this long without a byte either way. @default {30000} */
  stallMs?: number;
  /** Called with every byte count moved (either way), for progress. */
  onBytes?: (n: number) => void;
}

/**
 * The client side: sends the header and `up`, receives `down`. With
 * `resetAt`, resets the connection once that many payload bytes have moved
 * either way (and reports `reset`).
 */
export function runClient(
  ch: Channel,
  spec: TransferSpec,
  pattern: Pattern,
  options: RunOptions & { resetAt?: number | null } = {},
): Promise<Outcome> {
  const header = new Uint8Array(HEADER_BYTES);
  const v = new DataView(header.buffer);
  [
    MAGIC,
    spec.id,
    spec.up,
    spec.down,
    spec.upAt,
    spec.downAt,
    spec.serviceResetAt ?? NEVER,
  ].forEach((x, i) => v.setUint32(i * 4, x >>> 0, true));
  return run(ch, pattern, options, {
    prelude: header,
    sendAt: spec.upAt,
    send: spec.up,
    receiveAt: spec.downAt,
    receive: spec.down,
    resetAt: options.resetAt ?? null,
  });
}

/**
 * The service side: reads the header, then receives `up` and sends `down`,
 * resetting after `serviceResetAt` bytes if the header says so. `onHeader`
 * hears the spec as soon as it is read (the soak matches the two ends by
 * `id`); a stream that ends before a whole header is `ended` with no spec.
 */
export async function runService(
  ch: Channel,
  pattern: Pattern,
  options: RunOptions & { onHeader?: (spec: TransferSpec) => void } = {},
): Promise<{ spec: TransferSpec | null; outcome: Outcome }> {
  const header = new Uint8Array(HEADER_BYTES);
  let got = 0;
  try {
    while (got < HEADER_BYTES) {
      const n = await ch.read(header.subarray(got));
      if (n === null) break;
      got += n;
    }
  } catch (err) {
    return {
      spec: null,
      outcome: ended(`reading the header: ${text(err)}`, got, 0),
    };
  }
  if (got < HEADER_BYTES) {
    return {
      spec: null,
      outcome: ended(`end of stream inside the header (${got} bytes)`, got, 0),
    };
  }
  const v = new DataView(header.buffer);
  const f = (i: number) => v.getUint32(i * 4, true);
  if (f(0) !== MAGIC) {
    return {
      spec: null,
      outcome: {
        kind: "mismatch",
        detail: "bad header magic",
        bytesIn: got,
        bytesOut: 0,
      },
    };
  }
  const spec: TransferSpec = {
    id: f(1),
    up: f(2),
    down: f(3),
    upAt: f(4),
    downAt: f(5),
    serviceResetAt: f(6) === NEVER ? null : f(6),
  };
  options.onHeader?.(spec);
  const outcome = await run(ch, pattern, options, {
    prelude: null,
    sendAt: spec.downAt,
    send: spec.down,
    receiveAt: spec.upAt,
    receive: spec.up,
    resetAt: spec.serviceResetAt,
  });
  return { spec, outcome };
}

interface Plan {
  prelude: Uint8Array | null;
  sendAt: number;
  send: number;
  receiveAt: number;
  receive: number;
  /** Reset once this many payload bytes have gone either way. */
  resetAt: number | null;
}

async function run(
  ch: Channel,
  pattern: Pattern,
  options: RunOptions,
  plan: Plan,
): Promise<Outcome> {
  const stallMs = options.stallMs ?? 30_000;
  let bytesIn = 0;
  let bytesOut = 0;
  let lastProgress = Date.now();
  let resetting = false;
  let failure: Outcome | null = null;
  const progress = (n: number) => {
    lastProgress = Date.now();
    options.onBytes?.(n);
  };
  // Settles when the run must stop early: a failure, or the reset point.
  let stop!: () => void;
  const stopped = new Promise<void>((r) => (stop = r));
  const fail = (o: Outcome) => {
    failure ??= o;
    stop();
  };
  const moved = () => {
    if (
      plan.resetAt !== null && !resetting && bytesIn + bytesOut >= plan.resetAt
    ) {
      resetting = true;
      stop();
    }
  };
  let digestChecked!: () => void;
  const peerDigest = new Promise<void>((r) => (digestChecked = r));
  let ackReceived!: () => void;
  const peerAck = new Promise<void>((r) => (ackReceived = r));
  const over = () => resetting || failure !== null;

  const sending = (async () => {
    try {
      if (plan.prelude !== null) await ch.write(plan.prelude);
      const hash = createHash("sha256");
      for (let at = 0; at < plan.send && !over();) {
        const n = Math.min(CHUNK, plan.send - at);
        const piece = new Uint8Array(n);
        let k = 0;
        pattern.each(plan.sendAt + at, n, (p) => {
          piece.set(p, k);
          k += p.length;
        });
        hash.update(piece);
        await ch.write(piece);
        at += n;
        bytesOut += n;
        progress(n);
        moved();
      }
      if (over()) return;
      await ch.write(new Uint8Array(hash.digest()));
      // Acknowledge the peer's stream once it checked out, then end ours
      // once the peer acknowledged it (see the module doc).
      await Promise.race([peerDigest, stopped]);
      if (over()) return;
      await ch.write(new Uint8Array([ACK]));
      await Promise.race([peerAck, stopped]);
      if (over()) return;
      await ch.closeWrite();
    } catch (err) {
      if (!resetting) {
        fail(
          ended(`writing at byte ${bytesOut}: ${text(err)}`, bytesIn, bytesOut),
        );
      }
    }
  })();

  const receiving = (async () => {
    const hash = createHash("sha256");
    const buf = new Uint8Array(CHUNK);
    const digest = new Uint8Array(32);
    let digestGot = 0;
    let acked = false;
    const mismatch = (detail: string) =>
      fail({ kind: "mismatch", detail, bytesIn, bytesOut });
    try {
      while (!over()) {
        const n = await ch.read(buf);
        if (over()) return;
        if (n === null) {
          if (!acked) {
            fail(
              ended(
                bytesIn < plan.receive
                  ? `end of stream after ${bytesIn} of ${plan.receive} bytes`
                  : digestGot < 32
                  ? "end of stream inside the digest"
                  : "end of stream before the acknowledgement",
                bytesIn,
                bytesOut,
              ),
            );
          }
          return;
        }
        progress(n);
        let chunk = buf.subarray(0, n);
        const payload = Math.min(chunk.length, plan.receive - bytesIn);
        if (payload > 0) {
          const part = chunk.subarray(0, payload);
          if (!pattern.matches(plan.receiveAt + bytesIn, part)) {
            return mismatch(
              `bytes differ within ${bytesIn}..${bytesIn + payload}`,
            );
          }
          hash.update(part);
          bytesIn += payload;
          moved();
          chunk = chunk.subarray(payload);
        }
        if (chunk.length > 0 && digestGot < 32) {
          const take = Math.min(32 - digestGot, chunk.length);
          digest.set(chunk.subarray(0, take), digestGot);
          digestGot += take;
          chunk = chunk.subarray(take);
          if (digestGot === 32) {
            const mine = new Uint8Array(hash.digest());
            if (!mine.every((b, i) => b === digest[i])) {
              return mismatch("SHA-256 differs");
            }
            digestChecked();
          }
        }
        if (chunk.length > 0) {
          if (acked || chunk[0] !== ACK || chunk.length > 1) {
            return mismatch(
              `${chunk.length} unexpected bytes after the digest`,
            );
          }
          acked = true;
          ackReceived();
        }
      }
    } catch (err) {
      if (!resetting) {
        fail(
          ended(`reading at byte ${bytesIn}: ${text(err)}`, bytesIn, bytesOut),
        );
      }
    }
  })();

  let watchdog: ReturnType<typeof setInterval> | undefined;
  const stalled = new Promise<void>((resolve) => {
    watchdog = setInterval(() => {
      if (Date.now() - lastProgress > stallMs) {
        fail({
          kind: "stalled",
          detail:
            `no byte either way for ${stallMs} ms (in ${bytesIn}, out ${bytesOut})`,
          bytesIn,
          bytesOut,
        });
        resolve();
      }
    }, Math.min(1000, stallMs / 4));
  });

  try {
    await Promise.race([Promise.all([sending, receiving]), stopped, stalled]);
    if (resetting && failure === null) {
      if (ch.reset !== undefined) ch.reset();
      else {
        // Let incoming data pile up unread, so closing sends RST.
        await new Promise((r) => setTimeout(r, RESET_PILE_UP_MS));
        ch.close();
      }
      await Promise.allSettled([sending, receiving]);
      return { kind: "reset", bytesIn, bytesOut };
    }
  } finally {
    clearInterval(watchdog);
    ch.close(); // unblocks a pending read or write after a failure
    await Promise.allSettled([sending, receiving]);
  }
  return failure ?? { kind: "ok", bytesIn, bytesOut };
}

function ended(detail: string, bytesIn: number, bytesOut: number): Outcome {
  return { kind: "ended", detail, bytesIn, bytesOut };
}

function text(err: unknown): string {
  return err instanceof Error ? `${err.name}: ${err.message}` : String(err);
}

/**
 * A WebSocket (Deno's client) as a {@linkcode Channel}: binary messages
 * carry the bytes. WebSocket has no half-close, so `closeWrite` does
 * nothing; the service's end of stream arrives as a 1000 close, any other
 * close is a reset, and `close()` on an open socket sends 4000 (an abnormal
 * close: the sidecar resets the guest's side). `closed` settles once the
 * socket is closed, so a test can wait for it.
 */
export function wsChannel(
  ws: WebSocket,
  highWaterMark = 1 << 20,
): Channel & { closed: Promise<CloseEvent> } {
  ws.binaryType = "arraybuffer";
  const queue: Uint8Array[] = [];
  let end: CloseEvent | null = null;
  let wake: (() => void) | null = null;
  const closed = new Promise<CloseEvent>((resolve) => {
    ws.addEventListener("close", (e) => {
      end = e;
      wake?.();
      resolve(e);
    });
  });
  ws.addEventListener("message", (e) => {
    queue.push(new Uint8Array(e.data as ArrayBuffer));
    wake?.();
  });
  return {
    closed,
    async read(buf) {
      while (queue.length === 0) {
        const e: CloseEvent | null = end;
        if (e !== null) {
          if (e.code === 1000) return null;
          throw new Error(`WebSocket closed with ${e.code} ${e.reason}`);
        }
        await new Promise<void>((r) => (wake = r));
        wake = null;
      }
      const head = queue[0]!;
      const n = Math.min(buf.length, head.length);
      buf.set(head.subarray(0, n));
      if (n === head.length) queue.shift();
      else queue[0] = head.subarray(n);
      return n;
    },
    async write(chunk) {
      while (
        ws.bufferedAmount > highWaterMark && ws.readyState === WebSocket.OPEN
      ) {
        await new Promise((r) => setTimeout(r, 2));
      }
      if (ws.readyState !== WebSocket.OPEN) {
        throw new Error("the WebSocket is no longer open");
      }
      ws.send(chunk);
    },
    closeWrite: () => Promise.resolve(),
    close() {
      if (
        ws.readyState === WebSocket.OPEN ||
        ws.readyState === WebSocket.CONNECTING
      ) {
        ws.close(4000, "reset by the client");
      }
    },
  };
}

/** Opens a WebSocket to `url`; rejects if it does not open within `timeoutMs`. */
export function openWebSocket(
  url: string,
  timeoutMs = 10_000,
): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    const timer = setTimeout(() => {
      ws.close();
      reject(new Error(`WebSocket ${url} did not open within ${timeoutMs} ms`));
    }, timeoutMs);
    ws.onopen = () => {
      clearTimeout(timer);
      resolve(ws);
    };
    ws.onerror = () => {
      clearTimeout(timer);
      reject(new Error(`WebSocket ${url} failed to open`));
    };
  });
}
