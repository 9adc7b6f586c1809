/**
 * The device's main loop: answers the transport, moves packets between the
 * queues and the layer above (a {@linkcode DevicePort}: the vsock engine),
 * beats, and sleeps on the {@linkcode Waker} when there is nothing to do.
 *
 * One turn takes at most `batch` packets from the tx queue, then lets the
 * layer above write what it has into the rx queue, then serves the sockets
 * of the layer above that became ready (an {@linkcode IoPoller}). After a
 * turn it paces itself with a {@linkcode LoopPacer}: it spins briefly after
 * work, yielding to the event loop often enough that timers, the admin API
 * and WebSocket traffic keep flowing, then sleeps on its waker. Tx
 * processing never waits for rx room: replies the engine cannot place yet
 * stay queued in the engine (virtio 1.3, 5.10.6.3.1).
 *
 * @module
 */

import type { LogFn } from "../log.ts";
import { silentLog } from "../log.ts";
import type { InboundPacket } from "../packets/inbound_packet.ts";
import type { DeviceRx } from "../packets/device_rx.ts";
import { type IoPoller, serveSockets } from "../notify/io_poller.ts";
import { Waker } from "../notify/waker.ts";
import { LoopPacer, settle } from "./loop_pacer.ts";
import type {
  ActiveQueues,
  DeviceTransport,
  TransportChange,
} from "./device_transport.ts";
import { queueBits } from "./layout.ts";

/** The device's default heartbeat period (see {@linkcode DeviceRunnerOptions}). */
const DEVICE_HEARTBEAT_MS = 250;

/** What the device loop drives: the vsock engine, or a test's echo. */
export interface DevicePort {
  /** The driver reached DRIVER_OK. */
  activated(queues: ActiveQueues): void;
  /** The queues went away (reset, guest gone, broken ring). */
  deactivated(reason: string): void;
  /** A packet from the driver; copy what you keep before returning. */
  receive(packet: InboundPacket): void;
  /** Writes pending packets into the rx queue; returns how many it wrote. */
  transmit(rx: DeviceRx): number;
  /**
   * Whether packets wait for rx buffers. Lets the loop tell "the driver
   * posted buffers we need" from "buffers are posted" (they always are).
   */
  hasPendingOutput?(): boolean;
}

/** Device loop settings. */
export interface DeviceRunnerOptions {
  /**
   * Heartbeat period, and so the longest an idle loop sleeps. The driver
   * gives up on a device after 3000 ms without a beat, so 250 ms leaves a
   * wide margin while waking an idle loop less than half as often as 100
   * ms did (docs/performance.md, idle CPU). The idle loop checks the
   * driver's heartbeat only when it beats, so a transport whose
   * `driverTimeoutMs` is under 1000 ms gets a quarter of it instead.
   * @default {250}
   */
  heartbeatMs?: number;
  /** Packets taken from the tx queue per turn. @default {256} */
  batch?: number;
  /** Eventfds the driver rings (doorbell mode). */
  doorbells?: readonly number[];
  /** Interrupts the driver on `vector` (doorbell mode). */
  ringDriver?: (vector: number) => void;
  /** Waker back-off settings. */
  waker?: Waker;
  /** The layer above's sockets, served on every turn. */
  io?: IoPoller;
  /** How long to spin after work (ms). @default {SPIN_MS} */
  spinMs?: number;
  log?: LogFn;
}

/** Runs a {@linkcode DeviceTransport} until stopped. */
export class DeviceRunner {
  readonly transport: DeviceTransport;
  #port: DevicePort;
  #waker: Waker;
  #ownsWaker: boolean;
  #heartbeatMs: number;
  #batch: number;
  #doorbells: readonly number[];
  #ringDriver: ((vector: number) => void) | undefined;
  #log: LogFn;
  #io: IoPoller | null;
  #pacer: LoopPacer;
  #stopping = false;
  #done: Promise<void> | null = null;
  #rxBit = 0;
  #eventBit = 0;

  constructor(
    transport: DeviceTransport,
    port: DevicePort,
    options: DeviceRunnerOptions = {},
  ) {
    this.transport = transport;
    this.#port = port;
    this.#heartbeatMs = options.heartbeatMs ??
      Math.min(DEVICE_HEARTBEAT_MS, transport.driverTimeoutMs / 4);
    this.#batch = options.batch ?? 256;
    this.#doorbells = options.doorbells ?? [];
    this.#ringDriver = options.ringDriver;
    this.#log = options.log ?? silentLog;
    this.#io = options.io ?? null;
    this.#pacer = new LoopPacer(options.spinMs);
    this.#ownsWaker = options.waker === undefined;
    // With doorbells the driver rings for every change that matters, so the
    // memory poll is only a safety net and can idle slowly.
    this.#waker = options.waker ??
      new Waker(
        transport.region,
        this.#doorbells.length > 0 ? DOORBELL_BACKOFF : LOOP_BACKOFF,
      );
    this.#watch();
  }

  /** Starts the loop; the promise settles when it stops. */
  run(): Promise<void> {
    this.#done ??= this.#loop();
    return this.#done;
  }

  /**
   * The driver is known to be gone (its QEMU left the doorbell server):
   * drop its queues now instead of waiting for the heartbeat to time out.
   */
  lost(reason: string): void {
    if (this.transport.queues !== null) {
      this.#apply(this.transport.fail(reason));
    }
  }

  /**
   * The layer above has something to send: put it in the rx queue now if
   * it can go (a kick comes from a write, outside any turn), and take a
   * turn soon for whatever cannot. Sending at once rather than on the next
   * turn took 3-5 us off each crossing of a 64-byte round trip.
   */
  kick(): void {
    const q = this.transport.queues;
    const sent = q === null || this.#stopping
      ? null
      : this.#pacer.exclusive(() => this.#transmit(q));
    if (sent !== null) {
      if (sent > 0) this.#waker.activity();
      if (!(this.#port.hasPendingOutput?.() ?? true) && !this.#broken(q!)) {
        return;
      }
    }
    this.#waker.poke();
  }

  /** Stops the loop and the waker; resolves once neither touches the region. */
  async stop(): Promise<void> {
    this.#stopping = true;
    this.#waker.poke();
    await this.#done;
    if (this.#ownsWaker) await this.#waker.close();
  }

  async #loop(): Promise<void> {
    let lastBeat = -Infinity;
    let rechecked = false;
    while (!this.#stopping) {
      const now = performance.now();
      if (now - lastBeat >= this.#heartbeatMs) {
        this.transport.beat();
        lastBeat = now;
      }
      let work = 0;
      // Sockets first: what they deliver reaches the engine (settle) in
      // time for this turn to put it in the ring.
      if ((work = serveSockets(this.#io, this.#log)) > 0) {
        await settle();
      }
      try {
        this.#apply(this.transport.poll(now));
        work += this.#turn();
      } catch (err) {
        // Nothing the guest writes should get here (it is validated), so
        // this is a bug; keep the process alive and the guest informed.
        this.#log("error", `device loop error: ${errorText(err)}`);
        if (this.transport.queues !== null) {
          this.#apply(this.transport.fail(`internal error: ${errorText(err)}`));
        }
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
      // Something arrived as we re-armed: take one more turn. Only one, so a
      // ring that reports work no turn can do cannot keep us from sleeping.
      if (!rechecked && this.#rearmDoorbells()) {
        rechecked = true;
        continue;
      }
      // Only what we need news of may wake us: buffers on the rx queue
      // matter only while output waits for them, the event queue's only
      // while an event does. Otherwise each buffer the driver gives back
      // wakes us for nothing (in a 64-byte ping-pong, once per round trip).
      if (!rechecked && this.#muteIdleQueues()) {
        rechecked = true;
        continue;
      }
      rechecked = false;
      const untilBeat = Math.max(
        1,
        this.#heartbeatMs - (performance.now() - lastBeat),
      );
      await this.#waker.wait(untilBeat);
      this.#pacer.slept(performance.now());
    }
  }

  /** One turn over the queues; returns how much work it did. */
  #turn(): number {
    const q = this.transport.queues;
    if (q === null) return 0;
    return this.#pacer.exclusive(() => this.#turnOver(q)) ?? 0;
  }

  #turnOver(q: ActiveQueues): number {
    this.#waker.noteSeen();
    let work = 0;
    while (work < this.#batch && q.deviceTx.next()) {
      this.#port.receive(q.deviceTx.packet);
      work++;
    }
    q.deviceTx.flush();
    if (this.transport.queues !== q) return work; // the port reset us
    work += this.#transmit(q);
    const broken = this.#broken(q);
    if (broken !== null) this.#apply(this.transport.fail(broken));
    return work;
  }

  /**
   * Writes what the layer above has into the rx queue, flushes events, and
   * interrupts the driver if it asked; returns the packets written.
   */
  #transmit(q: ActiveQueues): number {
    const tx = this.#port.transmit(q.deviceRx);
    if (q.events.pending > 0) q.events.flush();
    if (this.#ringDriver !== undefined && this.#broken(q) === null) {
      // Every queue's decision is taken (and recorded), then one ring.
      const rx = q.rx.shouldNotify();
      const txq = q.tx.shouldNotify();
      const event = q.event.shouldNotify();
      if (rx || txq || event) this.#ringDriver(q.driverVector);
    }
    return tx;
  }

  #broken(q: ActiveQueues): string | null {
    return q.tx.broken ?? q.rx.broken ?? q.event.broken;
  }

  /**
   * In doorbell mode, asks the driver to ring for new buffers before we
   * sleep (avail_event, or clearing NO_NOTIFY); true when some arrived
   * meanwhile and we should not sleep.
   */
  #rearmDoorbells(): boolean {
    const q = this.transport.queues;
    if (q === null || this.#doorbells.length === 0) return false;
    // Each enable re-checks its ring after a fence; what that finds is work
    // only if it is new: tx packets always are, rx buffers only when output
    // waits for room (posted buffers are the normal state), event buffers
    // only when an event waits.
    const tx = q.tx.enableNotifications();
    const rx = q.rx.enableNotifications();
    const event = q.event.enableNotifications();
    return tx || (rx && (this.#port.hasPendingOutput?.() ?? false)) ||
      (event && q.events.pending > 0);
  }

  /**
   * Mutes the waker's words of the queues with nothing waiting on them;
   * true when one we unmute already has news (found while it was muted).
   */
  #muteIdleQueues(): boolean {
    const q = this.transport.queues;
    if (q === null) {
      this.#waker.mute(0);
      return false;
    }
    const output = this.#port.hasPendingOutput?.() ?? true;
    const events = q.events.pending > 0;
    this.#waker.mute(
      (output ? 0 : this.#rxBit) | (events ? 0 : this.#eventBit),
    );
    return (output && q.rx.pending() > 0) || (events && q.event.pending() > 0);
  }

  #apply(change: TransportChange | null): void {
    if (change === null) return;
    if (change.type === "activated") {
      this.#port.activated(change.queues);
    } else {
      this.#port.deactivated(change.reason);
    }
    this.#watch();
  }

  #watch(): void {
    const words = this.transport.watchedWords();
    this.#rxBit = queueBits(words, ["rx"]);
    this.#eventBit = queueBits(words, ["event"]);
    this.#waker.mute(0);
    this.#waker.watch(words, this.#doorbells, this.#io?.fd ?? -1);
  }
}

/**
 * Waker back-off under a loop that spins itself (a {@linkcode LoopPacer}):
 * the worker takes over only once the loop sleeps, so it need not spin.
 */
export const LOOP_BACKOFF = { spinMs: 0 };

/** Waker back-off when doorbells wake us: the idle memory poll once a second. */
export const DOORBELL_BACKOFF = { ...LOOP_BACKOFF, idleSleepMs: 1000 };

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
