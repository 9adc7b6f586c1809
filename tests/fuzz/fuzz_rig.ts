/**
 * The fuzz run's machine: the real device (DeviceTransport + DeviceRunner +
 * a host VsockEngine through DeviceEnginePort) over an instrumented view of
 * an in-memory region, and the real guest (DriverTransport + DriverRunner +
 * a guest VsockEngine) over a plain view of the same memory. The hostile
 * actor writes through the guest's view, between the runners' turns.
 *
 * Port wrappers sit between each runner and its engine: the device's
 * records which pool the live queues were validated against (for the
 * write checks) and every deactivation; the driver's diverts packets for
 * the hostile actor's ports to it, so the hostile actor sees the host's
 * replies as a raw socket would.
 *
 * @module
 */

import "../_support/ffi.ts";
import { Region } from "../../device/shm/region.ts";
import type { LogFn, LogLevel } from "../../device/log.ts";
import {
  type ActiveQueues,
  DeviceTransport,
} from "../../device/transport/device_transport.ts";
import {
  type DevicePort,
  DeviceRunner,
} from "../../device/transport/device_runner.ts";
import {
  type DriverQueues,
  DriverTransport,
  type DriverTransportOptions,
} from "../../device/transport/driver_transport.ts";
import {
  type DriverPort,
  DriverRunner,
} from "../../device/transport/driver_runner.ts";
import { H } from "../../device/transport/layout.ts";
import type { InboundPacket } from "../../device/packets/inbound_packet.ts";
import type { DeviceRx } from "../../device/packets/device_rx.ts";
import type { DriverTx } from "../../device/packets/driver_tx.ts";
import { VsockEngine } from "../../device/vsock/engine.ts";
import {
  DeviceEnginePort,
  DriverEnginePort,
} from "../../device/vsock/transport_ports.ts";
import { InstrumentedRegion } from "./instrumented_region.ts";

/** The guest's CID in the fuzz run. */
export const GUEST_CID = 3;

/** One captured log line. */
export interface LogLine {
  level: LogLevel;
  message: string;
}

/** A log sink that keeps the last lines and counts by level. */
export class CapturedLog {
  readonly counts: Record<LogLevel, number> = {
    debug: 0,
    info: 0,
    warn: 0,
    error: 0,
  };
  readonly errors: string[] = [];
  #recent: LogLine[] = [];
  #listeners: Array<(line: LogLine) => void> = [];

  readonly fn: LogFn = (level, message) => {
    this.counts[level]++;
    if (level === "error" && this.errors.length < 50) this.errors.push(message);
    const line = { level, message };
    this.#recent.push(line);
    if (this.#recent.length > 64) this.#recent.shift();
    for (const l of this.#listeners) l(line);
  };

  /** Calls `listener` for every line from now on. */
  listen(listener: (line: LogLine) => void): void {
    this.#listeners.push(listener);
  }

  /** The last lines, oldest first. */
  recent(): LogLine[] {
    return [...this.#recent];
  }
}

/** The device loop's port, wrapped to watch activations. */
export class FuzzDevicePort implements DevicePort {
  readonly inner: DeviceEnginePort;
  /** Pool window each live queue set was validated against. */
  readonly pools: WeakMap<ActiveQueues, { start: number; end: number }> =
    new WeakMap();
  activations = 0;
  readonly deactivations: string[] = [];
  onActivated: (
    queues: ActiveQueues,
    pool: { start: number; end: number },
  ) => void = () => {};
  onDeactivated: (reason: string) => void = () => {};
  #guestRegion: Region;

  constructor(inner: DeviceEnginePort, guestRegion: Region) {
    this.inner = inner;
    this.#guestRegion = guestRegion;
  }

  /**
   * The pool `queues` were validated against. The device reads the pool
   * words while it activates, and nothing of the guest runs between that
   * and the first time this is asked (at activation, or at the device's
   * first write), so reading them then gives the same values.
   */
  poolOf(queues: ActiveQueues): { start: number; end: number } {
    let pool = this.pools.get(queues);
    if (pool === undefined) {
      const start = this.#guestRegion.load32(H.POOL_OFFSET);
      pool = { start, end: start + this.#guestRegion.load32(H.POOL_SIZE) };
      this.pools.set(queues, pool);
    }
    return pool;
  }

  activated(queues: ActiveQueues): void {
    const pool = this.poolOf(queues);
    this.activations++;
    this.onActivated(queues, pool);
    this.inner.activated(queues);
  }

  deactivated(reason: string): void {
    this.deactivations.push(reason);
    if (this.deactivations.length > 100) this.deactivations.shift();
    this.inner.deactivated(reason);
    this.onDeactivated(reason);
  }

  receive(packet: InboundPacket): void {
    this.inner.receive(packet);
  }

  transmit(rx: DeviceRx): number {
    return this.inner.transmit(rx);
  }

  hasPendingOutput(): boolean {
    return this.inner.hasPendingOutput();
  }
}

/** The driver loop's port, wrapped to divert the hostile actor's packets. */
export class FuzzDriverPort implements DriverPort {
  readonly inner: DriverEnginePort;
  /** Whether a packet for this local port belongs to the hostile actor. */
  isHostile: (port: number) => boolean = () => false;
  /** Receives the hostile actor's packets. */
  hostile: (packet: InboundPacket) => void = () => {};
  onDeactivated: (reason: string) => void = () => {};
  readonly deactivations: string[] = [];

  constructor(inner: DriverEnginePort) {
    this.inner = inner;
  }

  activated(queues: DriverQueues): void {
    this.inner.activated(queues);
  }

  deactivated(reason: string): void {
    this.deactivations.push(reason);
    if (this.deactivations.length > 100) this.deactivations.shift();
    this.inner.deactivated(reason);
    this.onDeactivated(reason);
  }

  receive(packet: InboundPacket): void {
    if (this.isHostile(packet.header.dstPort)) this.hostile(packet);
    else this.inner.receive(packet);
  }

  event(id: number): void {
    this.inner.event(id);
  }

  transmit(tx: DriverTx, maxPayload: number): number {
    return this.inner.transmit(tx, maxPayload);
  }
}

/** Settings of one rig. */
export interface RigOptions {
  regionSize: number;
  driver: DriverTransportOptions;
}

/** Both sides, running. */
export class FuzzRig {
  readonly sab: SharedArrayBuffer;
  readonly deviceRegion: InstrumentedRegion;
  /** The guest's view: the well-behaved driver and the hostile actor. */
  readonly region: Region;
  device: DeviceTransport;
  deviceRunner: DeviceRunner;
  readonly devicePort: FuzzDevicePort;
  readonly host: VsockEngine;
  readonly guest: VsockEngine;
  readonly driverPort: FuzzDriverPort;
  readonly deviceLog = new CapturedLog();
  readonly driverLog = new CapturedLog();
  readonly engineLog = new CapturedLog();
  driver: DriverTransport;
  driverRunner: DriverRunner;
  driverOptions: DriverTransportOptions;
  /** Notification decisions the device took (it "rings" a counter). */
  rings = 0;
  #deviceDone: Promise<void>;
  #driverDone: Promise<void>;

  constructor(options: RigOptions) {
    this.sab = new SharedArrayBuffer(options.regionSize);
    this.deviceRegion = new InstrumentedRegion(this.sab);
    this.region = new Region(this.sab);
    this.device = DeviceTransport.attach(this.deviceRegion, {
      guestCid: GUEST_CID,
      log: this.deviceLog.fn,
    });
    this.host = new VsockEngine({ log: this.engineLog.fn });
    this.devicePort = new FuzzDevicePort(
      new DeviceEnginePort(this.host, GUEST_CID),
      this.region,
    );
    // From here on the device may write only its own words, its used rings
    // and the pool it accepted.
    this.deviceRegion.arm(() => {
      const queues = this.device.queues;
      return {
        queues,
        pool: queues === null ? null : this.devicePort.poolOf(queues),
      };
    });
    this.deviceRunner = this.#newDeviceRunner();
    this.host.setKick(() => this.deviceRunner.kick());
    this.guest = new VsockEngine({ log: this.engineLog.fn });
    this.driverPort = new FuzzDriverPort(new DriverEnginePort(this.guest));
    this.driverOptions = options.driver;
    this.driver = new DriverTransport(this.region, this.#driverSettings());
    this.driverRunner = this.#newDriverRunner();
    this.guest.setKick(() => this.driverRunner.kick());
    this.#deviceDone = this.deviceRunner.run();
    this.#driverDone = this.driverRunner.run();
  }

  /** Both engines active and both transports running. */
  get up(): boolean {
    return this.device.state === "running" && this.driver.queues !== null &&
      this.host.active && this.guest.active;
  }

  /** The well-behaved driver's live queues. */
  get queues(): DriverQueues | null {
    return this.driver.queues;
  }

  /** Wakes both loops now instead of at their next poll. */
  kick(): void {
    this.deviceRunner.kick();
    this.driverRunner.kick();
  }

  /**
   * Lets the device answer the header now, as its loop does when it looks
   * (the hostile actor uses it to write several statuses in a row without
   * the well-behaved driver running in between). What it throws is a bug.
   */
  answerNow(): void {
    const change = this.device.poll();
    if (change === null) return;
    if (change.type === "activated") this.devicePort.activated(change.queues);
    else this.devicePort.deactivated(change.reason);
  }

  /** Waits until {@linkcode up}, at most `timeoutMs`; returns whether it is. */
  async waitUp(timeoutMs: number): Promise<boolean> {
    const deadline = performance.now() + timeoutMs;
    while (!this.up) {
      if (performance.now() > deadline) return false;
      this.kick();
      await new Promise((r) => setTimeout(r, 1));
    }
    return true;
  }

  /**
   * The device process restarts: the old loop stops, the host engine loses
   * everything (as a dead process would), and a new device re-attaches to
   * the region (bumping DEVICE_GENERATION, asking a present driver for a
   * reset, and owing it a TRANSPORT_RESET event).
   */
  async restartDevice(): Promise<void> {
    await this.deviceRunner.stop();
    await this.#deviceDone;
    if (this.host.active) this.devicePort.deactivated("device restarted");
    this.device = DeviceTransport.attach(this.deviceRegion, {
      guestCid: GUEST_CID,
      log: this.deviceLog.fn,
    });
    this.deviceRunner = this.#newDeviceRunner();
    this.#deviceDone = this.deviceRunner.run();
  }

  /**
   * The guest restarts its driver (a reboot, an agent restart), possibly
   * with other settings: the old loop stops, its connections end, and a new
   * driver bumps DRIVER_GENERATION and negotiates from scratch.
   */
  async restartDriver(options: DriverTransportOptions): Promise<void> {
    await this.driverRunner.stop();
    await this.#driverDone;
    this.guest.deactivate("guest driver restarted");
    this.driverOptions = options;
    this.driver = new DriverTransport(this.region, this.#driverSettings());
    this.driverRunner = this.#newDriverRunner();
    this.#driverDone = this.driverRunner.run();
  }

  /** Ends every connection and stops both loops. */
  async stop(): Promise<void> {
    this.host.close();
    this.guest.close();
    await new Promise((r) => setTimeout(r, 5));
    await this.driverRunner.stop();
    await this.deviceRunner.stop();
    await Promise.all([this.#driverDone, this.#deviceDone]);
  }

  #driverSettings(): DriverTransportOptions {
    return { ...this.driverOptions, log: this.driverLog.fn };
  }

  #newDeviceRunner(): DeviceRunner {
    // A ring callback makes the loop take its notification decisions,
    // which read the driver's used_event and flags: guest-written words.
    return new DeviceRunner(this.device, this.devicePort, {
      log: this.deviceLog.fn,
      ringDriver: () => this.rings++,
    });
  }

  #newDriverRunner(): DriverRunner {
    // A short retry: a negotiation that fails because the hostile actor
    // scribbled over it should not idle the run for 200 ms.
    return new DriverRunner(this.driver, this.driverPort, {
      log: this.driverLog.fn,
      retryMs: 5,
    });
  }
}
