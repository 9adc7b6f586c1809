/**
 * The well-behaved connections that run beside the hostile actor: echoes
 * through a host STREAM listener, a host SEQPACKET listener and a guest
 * STREAM listener, each moving a seeded payload and checking every byte (and
 * every message boundary) that comes back.
 *
 * Every connection remembers the hostile episode number when it started. A
 * connection that fails while no transport-level episode has happened since
 * then was disturbed by packet-level hostility, which must never happen: it
 * is reported. One that fails across an episode (the transport was reset
 * under it) is excused and counted.
 *
 * @module
 */

import type { VsockEngine } from "../../device/vsock/engine.ts";
import type { Region } from "../../device/shm/region.ts";
import type { SegmentList } from "../../device/virtqueue/segments.ts";
import type {
  PipeSource,
  VsockConnection,
} from "../../device/vsock/connection.ts";
import type { VsockListener } from "../../device/vsock/listener.ts";
import { VsockMessage } from "../../device/vsock/vsock_message.ts";
import { Prng } from "../_support/prng.ts";

/** Host STREAM echo port. */
export const ECHO_PORT = 5000;
/** Host SEQPACKET echo port. */
export const SEQ_ECHO_PORT = 5001;
/** Guest STREAM echo port (host-initiated connections). */
export const GUEST_ECHO_PORT = 7001;
/** Host ports a hostile packet may aim at on purpose. */
export const HOST_PORTS = [ECHO_PORT, SEQ_ECHO_PORT] as const;

/** A connection that made no progress for this long, outside any episode, is stalled. */
export const STALL_MS = 10_000;

/** What happened to the good connections. */
export interface GoodLedger {
  started: number;
  completed: number;
  /** Failed across a transport-level episode: allowed. */
  excused: number;
  bytes: number;
  /** Failures with no episode to blame; the first few. */
  failures: string[];
}

/** Where the ledger gets the episode count from. */
export interface EpisodeClock {
  /** Transport-level episodes begun so far. */
  readonly episode: number;
  /** Whether one is under way (no new connections then). */
  readonly inEpisode: boolean;
}

type Kind = "guest-stream" | "guest-seqpacket" | "host-stream";

interface Live {
  id: number;
  kind: Kind;
  episode: number;
  lastProgress: number;
  conn: VsockConnection | null;
  done: Promise<void>;
}

/** How many of each kind run at once. */
const TARGET: Record<Kind, number> = {
  "guest-stream": 2,
  "guest-seqpacket": 1,
  "host-stream": 1,
};

/** Runs and checks the well-behaved connections. */
export class GoodTraffic {
  readonly ledger: GoodLedger = {
    started: 0,
    completed: 0,
    excused: 0,
    bytes: 0,
    failures: [],
  };
  #host: VsockEngine;
  #guest: VsockEngine;
  #clock: EpisodeClock;
  #seed: number;
  #nextId = 0;
  #live = new Map<number, Live>();
  #listeners: VsockListener[] = [];
  #echoes = new Set<Promise<void>>();
  #accepting: Promise<void>[] = [];
  #stopping = false;

  constructor(
    host: VsockEngine,
    guest: VsockEngine,
    clock: EpisodeClock,
    seed: number,
  ) {
    this.#host = host;
    this.#guest = guest;
    this.#clock = clock;
    this.#seed = seed;
    // Listeners survive transport resets, so they are set up once.
    this.#serve(host.listen(ECHO_PORT));
    this.#serve(host.listen(SEQ_ECHO_PORT, { type: "seqpacket" }));
    this.#serve(guest.listen(GUEST_ECHO_PORT));
  }

  /** Connections running now. */
  get live(): number {
    return this.#live.size;
  }

  /** Starts connections up to the target, unless an episode is under way. */
  topUp(): void {
    if (this.#stopping || this.#clock.inEpisode) return;
    const running: Record<Kind, number> = {
      "guest-stream": 0,
      "guest-seqpacket": 0,
      "host-stream": 0,
    };
    for (const l of this.#live.values()) running[l.kind]++;
    for (const kind of Object.keys(TARGET) as Kind[]) {
      while (running[kind]++ < TARGET[kind]) this.#start(kind);
    }
  }

  /**
   * One small round trip on a fresh connection, which must succeed within
   * `timeoutMs`: the check that the device serves new connections again
   * after an episode. Returns why it failed, or `null`.
   */
  async probe(timeoutMs: number): Promise<string | null> {
    const data = new Prng(this.#seed ^ this.#nextId++).bytes(1024);
    let conn: VsockConnection | null = null;
    const attempt = (async () => {
      conn = await this.#guest.connect(ECHO_PORT, { timeoutMs });
      await streamEcho(conn, data, 512, () => {});
      const info = await conn.closed;
      if (info.reason !== "closed") throw new Error(info.message);
    })();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<string>((resolve) => {
      timer = setTimeout(
        () => resolve(`no echo within ${timeoutMs} ms`),
        timeoutMs,
      );
    });
    try {
      return await Promise.race([attempt.then(() => null), timeout]);
    } catch (err) {
      return errorText(err);
    } finally {
      clearTimeout(timer);
      (conn as VsockConnection | null)?.reset("probe over");
      await attempt.catch(() => {});
    }
  }

  /**
   * Stalled connections: no progress for {@linkcode STALL_MS} and no
   * episode since they started. They are reset and reported.
   */
  checkStalls(now = performance.now()): void {
    for (const l of this.#live.values()) {
      if (
        l.episode === this.#clock.episode && now - l.lastProgress > STALL_MS
      ) {
        this.#fail(
          l,
          `made no progress for ${Math.round(now - l.lastProgress)} ms`,
        );
        l.conn?.reset("stalled");
        l.lastProgress = now;
      }
    }
  }

  /** Waits for the running connections to finish (at most `timeoutMs`). */
  async drain(timeoutMs: number): Promise<boolean> {
    this.#stopping = true;
    const deadline = performance.now() + timeoutMs;
    while (this.#live.size > 0) {
      if (performance.now() > deadline) return false;
      await new Promise((r) => setTimeout(r, 5));
    }
    return true;
  }

  /** Stops listening and waits for the echo tasks (after the engines closed). */
  async stop(): Promise<void> {
    this.#stopping = true;
    for (const l of this.#listeners) l.close();
    await Promise.all(this.#accepting);
    await Promise.all([...this.#echoes]);
    await Promise.all([...this.#live.values()].map((l) => l.done));
  }

  #serve(listener: VsockListener): void {
    this.#listeners.push(listener);
    this.#accepting.push((async () => {
      for await (const conn of listener) {
        // An echo ends when its peer closes or resets (the hostile actor's
        // connections included), or when the transport goes away.
        const echo = conn.readable.pipeTo(conn.writable).catch(() => {})
          .finally(() => this.#echoes.delete(echo));
        this.#echoes.add(echo);
      }
    })());
  }

  #start(kind: Kind): void {
    const id = this.#nextId++;
    const rng = new Prng((this.#seed * 1_000_003 + id) >>> 0);
    // Mostly a few packets' worth; sometimes more than a 256 KiB window, so
    // credit updates and multi-buffer packets keep happening. (The run is
    // about correctness under hostility; bulk throughput only slows it.)
    const size = rng.chance(0.03)
      ? rng.int(256 << 10, 512 << 10)
      : rng.chance(0.15)
      ? rng.int(16 << 10, 96 << 10)
      : rng.int(1, 8 << 10);
    const live: Live = {
      id,
      kind,
      episode: this.#clock.episode,
      lastProgress: performance.now(),
      conn: null,
      done: Promise.resolve(),
    };
    const progress = (n: number) => {
      live.lastProgress = performance.now();
      this.ledger.bytes += n;
    };
    this.ledger.started++;
    live.done = (async () => {
      try {
        if (kind === "host-stream") {
          live.conn = await this.#host.connect(GUEST_ECHO_PORT);
        } else {
          live.conn = await this.#guest.connect(
            kind === "guest-seqpacket" ? SEQ_ECHO_PORT : ECHO_PORT,
            { type: kind === "guest-seqpacket" ? "seqpacket" : "stream" },
          );
        }
        if (kind === "guest-seqpacket") {
          await messageEcho(live.conn, rng, size, progress);
        } else {
          await streamEcho(
            live.conn,
            rng.bytes(size),
            1 + rng.int(0, 65536),
            progress,
            // Half the streams are pulled straight into the ring's buffers,
            // as the data plane's sockets are (VsockConnection.pipeFrom).
            // Its own generator: fills happen as the ring allows, and must
            // not shift the draws of the shared one.
            rng.chance(0.5) ? new Prng(rng.u32()) : null,
          );
        }
        const info = await live.conn.closed;
        if (info.reason !== "closed") {
          throw new Error(`closed with ${info.reason}: ${info.message}`);
        }
        this.ledger.completed++;
      } catch (err) {
        this.#fail(live, errorText(err));
        live.conn?.reset("failed");
      } finally {
        this.#live.delete(id);
      }
    })();
    this.#live.set(id, live);
  }

  #fail(live: Live, message: string): void {
    if (live.episode !== this.#clock.episode) {
      this.ledger.excused++;
      return;
    }
    if (this.ledger.failures.length < 20) {
      this.ledger.failures.push(
        `good ${live.kind} connection #${live.id}${
          live.conn === null
            ? ""
            : ` (local port ${live.conn.localPort}, peer port ${live.conn.peerPort})`
        } failed with no transport-level episode to blame: ${message}`,
      );
    }
  }
}

/**
 * Writes `data` in chunks of at most `chunk` bytes (or, given `pull`, has
 * the connection pull it from a source of random short reads) while
 * reading the echo, checks every byte, then closes and expects the end of
 * the stream.
 */
async function streamEcho(
  conn: VsockConnection,
  data: Uint8Array,
  chunk: number,
  progress: (n: number) => void,
  pull: Prng | null = null,
): Promise<void> {
  const writing = pull !== null ? pipeAll(conn, data, pull) : (async () => {
    const w = conn.writable.getWriter();
    for (let at = 0; at < data.length; at += chunk) {
      await w.write(data.slice(at, at + chunk));
    }
    await w.close();
  })();
  // Whichever side fails first is reported; the other must not go unheard.
  writing.catch(() => {});
  const reader = conn.readable.getReader();
  let at = 0;
  try {
    for (;;) {
      const r = await reader.read();
      if (r.done) break;
      const got = r.value;
      if (at + got.length > data.length) {
        throw new Error(
          `echo returned ${
            at + got.length
          } bytes, more than the ${data.length} sent`,
        );
      }
      for (let i = 0; i < got.length; i++) {
        if (got[i] !== data[at + i]) {
          throw new Error(`echo differs at byte ${at + i} of ${data.length}`);
        }
      }
      at += got.length;
      progress(got.length);
    }
  } finally {
    reader.releaseLock();
  }
  await writing;
  if (at !== data.length) {
    throw new Error(`echo ended after ${at} of ${data.length} bytes`);
  }
}

/**
 * Sends `data` through `pipeFrom`: a source that gives it out in random
 * short reads straight into the packets' buffers, now and then with
 * nothing ready (ready again a microtask later), then its end.
 */
function pipeAll(
  conn: VsockConnection,
  data: Uint8Array,
  rng: Prng,
): Promise<void> {
  let at = 0;
  const source: PipeSource & { ready: boolean } = {
    ready: true,
    fill(region: Region, dest: SegmentList): number | null {
      if (at === data.length) return null;
      if (rng.chance(0.1)) {
        source.ready = false;
        queueMicrotask(() => {
          source.ready = true;
          conn.sourceReady(source);
        });
        return 0;
      }
      const most = Math.min(data.length - at, rng.int(1, 300_000));
      let n = 0;
      for (let i = 0; i < dest.count && n < most; i++) {
        const take = Math.min(dest.lengths[i]!, most - n);
        region.write(dest.offsets[i]!, data.subarray(at + n, at + n + take));
        n += take;
      }
      at += n;
      return n;
    },
  };
  return conn.pipeFrom(source);
}

/**
 * Sends messages (some with EOR) totalling about `size` bytes and checks
 * that each comes back whole, in order, with its EOR flag.
 */
async function messageEcho(
  conn: VsockConnection,
  rng: Prng,
  size: number,
  progress: (n: number) => void,
): Promise<void> {
  const messages: VsockMessage[] = [];
  for (let total = 0; total < size;) {
    // Up to 96 KiB: larger than one packet, so messages are split and
    // reassembled; within the 256 KiB the echo's receive buffer holds.
    const m = VsockMessage.copyOf(
      rng.bytes(rng.int(0, Math.min(96 << 10, size - total))),
      rng.chance(0.3),
    );
    messages.push(m);
    total += Math.max(1, m.length);
  }
  const writing = (async () => {
    const w = conn.writable.getWriter();
    for (const m of messages) await w.write(m);
    await w.close();
  })();
  writing.catch(() => {});
  const reader = conn.readable.getReader();
  try {
    for (let i = 0; i < messages.length; i++) {
      const r = await reader.read();
      if (r.done) {
        throw new Error(`echo ended after ${i} of ${messages.length} messages`);
      }
      const want = messages[i]!;
      const got = r.value as VsockMessage;
      if (got.length !== want.length || !got.every((b, j) => b === want[j])) {
        throw new Error(
          `message ${i} came back as ${got.length} bytes, sent ${want.length}, or with other bytes`,
        );
      }
      if ((got.eor ?? false) !== want.eor) {
        throw new Error(
          `message ${i} came back with EOR ${got.eor}, sent ${want.eor}`,
        );
      }
      progress(got.length);
    }
    const end = await reader.read();
    if (!end.done) throw new Error("echo sent more messages than it was sent");
  } finally {
    reader.releaseLock();
  }
  await writing;
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
