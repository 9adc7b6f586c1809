/**
 * The driver's main loop (the guest agent's side): keeps the transport
 * negotiated, moves packets between the queues and the layer above (a
 * {@linkcode DriverPort}), beats, and sleeps on the {@linkcode Waker}.
 *
 * When the device restarts, asks for a reset, stops beating, or returns
 * something impossible, the port hears `deactivated`, and the loop resets
 * and renegotiates, retrying until the device answers again: the driver
 * process itself never has to restart.
 *
 * @module
 */

import type { LogFn } from "../log.ts";
import { silentLog } from "../log.ts";
import type { InboundPacket } from "../packets/inbound_packet.ts";
import type { DriverTx } from "../packets/driver_tx.ts";
import { type IoPoller, serveSockets } from "../notify/io_poller.ts";
import { Waker } from "../notify/waker.ts";
import type { DriverQueues, DriverTransport } from "./driver_transport.ts";
import { DEVICE_VECTOR, queueBits } from "./layout.ts";
import { DOORBELL_BACKOFF, LOOP_BACKOFF } from "./device_runner.ts";
import { LoopPacer, settle } from "./loop_pacer.ts";

/** What the driver loop drives: the guest-side vsock engine, or a test. */
export interface DriverPort {
  activated(queues: DriverQueues): void;
  deactivated(reason: string): void;
  /** A packet from the device; copy what you keep before returning. */
  receive(packet: InboundPacket): void;
  /** An event from the event queue (TRANSPORT_RESET). */
  event(id: number): void;
  /** Writes pending packets to the tx queue; returns how many. */
  transmit(tx: DriverTx, maxPayload: number): number;
  /**
   * Whether packets wait for tx room. Only then does the device consuming
   * tx buffers matter to us.
   */
  hasPendingOutput?(): boolean;
}

/** Driver loop settings. */
export interface DriverRunnerOptions {
  /** Heartbeat period. @default {100} */
  heartbeatMs?: number;
  /** Packets taken per turn. @default {256} */
  batch?: number;
  /** Rings the device's `vector` (doorbell mode). */
  ringDevice?: (vector: number) => void;
  /** Eventfds the device rings us on (a simulated guest that is an ivshmem client). */
  doorbells?: readonly number[];
  /** Pause between failed negotiations. @default {200} */
  retryMs?: number;
  /** How long each start attempt waits for the device to appear. @default {1000} */
  startWaitMs?: number;
  /** The layer above's sockets, served on every turn. */
  io?: IoPoller;
  /** How long to spin after work (ms). @default {SPIN_MS} */
  spinMs?: number;
  log?: LogFn;
}

/** Runs a {@linkcode DriverTransport} until stopped. */
export class DriverRunner {
  readonly transport: DriverTransport;
  #port: DriverPort;
  #waker: Waker;
  #heartbeatMs: number;
  #batch: number;
  #ringDevice: ((vector: number) => void) | undefined;
  #doorbells: readonly number[];
  #retryMs: number;
  #startWaitMs: number;
  #log: LogFn;
  #io: IoPoller | null;
  #pacer: LoopPacer;
  #stopping = false;
  /** The queues in use while active, for a kick's transmit. */
  #live: DriverQueues | null = null;
  #abort = new AbortController();
  #done: Promise<void> | null = null;
  #txBit = 0;

  constructor(
    transport: DriverTransport,
    port: DriverPort,
    options: DriverRunnerOptions = {},
  ) {
    this.transport = transport;
    this.#port = port;
    this.#heartbeatMs = options.heartbeatMs ?? 100;
    this.#batch = options.batch ?? 256;
    this.#ringDevice = options.ringDevice;
    this.#doorbells = options.doorbells ?? [];
    this.#retryMs = options.retryMs ?? 200;
    this.#startWaitMs = options.startWaitMs ?? 1000;
    this.#log = options.log ?? silentLog;
    this.#io = options.io ?? null;
    this.#pacer = new LoopPacer(options.spinMs);
    this.#waker = new Waker(
      transport.region,
      this.#doorbells.length > 0 ? DOORBELL_BACKOFF : LOOP_BACKOFF,
    );
  }

  /** Runs until stopped: starts the transport, then keeps it running. */
  run(): Promise<void> {
    this.#done ??= this.#loop();
    return this.#done;
  }

  /**
   * The layer above has something to send: put it in the tx queue now if
   * it can go, and take a turn soon for whatever cannot (see
   * `DeviceRunner.kick`).
   */
  kick(): void {
    const q = this.#live;
    const sent = q === null || this.transport.queues !== q
      ? null
      : this.#pacer.exclusive(() => this.#transmit(q));
    if (sent !== null) {
      if (sent > 0) this.#waker.activity();
      if (!(this.#port.hasPendingOutput?.() ?? true)) return;
    }
    this.#waker.poke();
  }

  async stop(): Promise<void> {
    this.#stopping = true;
    this.#abort.abort();
    this.#waker.poke();
    await this.#done?.catch(() => {});
    await this.#waker.close();
  }

  async #loop(): Promise<void> {
    const signal = this.#abort.signal;
    let lastBeat = -Infinity;
    let rechecked = false;
    let active = false;
    let started = false;
    while (!this.#stopping) {
      const now = performance.now();
      if (now - lastBeat >= this.#heartbeatMs) {
        this.transport.beat();
        lastBeat = now;
      }
      if (!active) {
        // Sockets still need answers while the device is away (a forward's
        // client is refused at once, not when the device returns).
        serveSockets(this.#io, this.#log);
        try {
          // The first start waits for the device and bumps our generation;
          // later ones reset and renegotiate over the same region.
          const queues = started
            ? await this.transport.negotiate(signal)
            : await this.transport.start(this.#startWaitMs, signal);
          started = true;
          active = true;
          this.#port.activated(queues);
          this.#live = queues;
          // The device queues TRANSPORT_RESET before it acknowledges
          // DRIVER_OK, so it is visible now: take it before any packet of
          // the new session, or it would end connections that session opens.
          for (
            let id = queues.events.next();
            id >= 0;
            id = queues.events.next()
          ) {
            this.#port.event(id);
          }
          this.#watch();
        } catch (err) {
          if (this.#stopping) break;
          this.#log(
            "warn",
            `cannot start the transport, retrying: ${errorText(err)}`,
          );
          // Keep beating while we wait, so the device does not drop us.
          this.transport.beat();
          await sleep(this.#retryMs, signal);
        }
        continue;
      }
      // Sockets first: what they deliver reaches the engine (settle) in
      // time for this turn to put it in the ring.
      let work = 0;
      if ((work = serveSockets(this.#io, this.#log)) > 0) {
        await settle();
      }
      const change = this.transport.poll(now);
      const q = this.transport.queues;
      if (change !== null || q === null) {
        active = false;
        this.#live = null;
        this.#port.deactivated(change?.reason ?? "transport stopped");
        this.#watch();
        continue;
      }
      work += this.#turn(q);
      const broken = q.rx.broken ?? q.tx.broken ?? q.event.broken;
      if (broken !== null) {
        this.#log("warn", `device broke a queue rule, resetting: ${broken}`);
        active = false;
        this.#live = null;
        this.#port.deactivated(`device error: ${broken}`);
        continue;
      }
      if (work > 0) {
        rechecked = false;
        this.#waker.activity();
        await this.#pacer.worked(now);
        continue;
      }
      const spin = this.#pacer.spin(now);
      if (spin !== null) {
        await spin;
        continue;
      }
      // Something arrived as we re-armed: take one more turn, only one.
      if (!rechecked && this.#rearmCallbacks(q)) {
        rechecked = true;
        continue;
      }
      // The device returning tx buffers matters only while output waits for
      // room; otherwise each one would wake us for nothing.
      if (!rechecked && this.#muteIdleQueues(q)) {
        rechecked = true;
        continue;
      }
      rechecked = false;
      await this.#waker.wait(
        Math.max(1, this.#heartbeatMs - (performance.now() - lastBeat)),
      );
      this.#pacer.slept(performance.now());
    }
  }

  #turn(q: DriverQueues): number {
    return this.#pacer.exclusive(() => this.#turnOver(q)) ?? 0;
  }

  #turnOver(q: DriverQueues): number {
    this.#waker.noteSeen();
    let work = 0;
    while (work < this.#batch && q.driverRx.next()) {
      this.#port.receive(q.driverRx.packet);
      work++;
    }
    const kick = q.rx.publish();
    for (let id = q.events.next(); id >= 0; id = q.events.next()) {
      this.#port.event(id);
      work++;
    }
    if (this.transport.queues !== q) return work;
    return work + this.#transmit(q, kick);
  }

  /**
   * Writes what the layer above has into the tx queue and rings the device
   * once if it asked (for this or, `ring`, for the rx buffers just
   * published); returns the packets written.
   */
  #transmit(q: DriverQueues, ring = false): number {
    // Free what the device has consumed now, not only on the next send:
    // otherwise finished entries would look like news at every re-arm.
    q.driverTx.reclaim();
    const tx = this.#port.transmit(q.driverTx, q.maxTxPayload);
    if ((q.tx.publish() || ring) && this.#ringDevice !== undefined) {
      this.#ringDevice(DEVICE_VECTOR.QUEUE);
    }
    return tx;
  }

  /**
   * When the device can wake us (doorbells), asks it to before we sleep
   * (used_event, or clearing NO_INTERRUPT); true when used entries arrived
   * meanwhile and we should not sleep.
   */
  #rearmCallbacks(q: DriverQueues): boolean {
    if (this.#doorbells.length === 0) return false;
    const rx = q.rx.enableCallbacks();
    const tx = q.tx.enableCallbacks();
    const event = q.event.enableCallbacks();
    return rx || tx || event;
  }

  /**
   * Mutes the tx queue's word unless output waits for room; true when the
   * device returned tx buffers we have not reclaimed (while it was muted).
   */
  #muteIdleQueues(q: DriverQueues): boolean {
    const output = this.#port.hasPendingOutput?.() ?? true;
    this.#waker.mute(output ? 0 : this.#txBit);
    return output && q.tx.hasUsed();
  }

  #watch(): void {
    const words = this.transport.watchedWords();
    this.#txBit = queueBits(words, ["tx"]);
    this.#waker.mute(0);
    this.#waker.watch(words, this.#doorbells, this.#io?.fd ?? -1);
  }
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
    function done() {
      clearTimeout(t);
      signal.removeEventListener("abort", done);
      resolve();
    }
  });
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
