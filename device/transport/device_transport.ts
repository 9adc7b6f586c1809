/**
 * The device side of the ivsock transport: initialises (or re-attaches to)
 * the region header, answers the driver's status handshake, validates the
 * queue configuration, and watches the driver's liveness.
 *
 * It never blocks and never throws on anything the driver wrote: a bad
 * feature set is refused with a reason, a bad queue configuration or a
 * broken ring marks the device NEEDS_RESET with a reason, and a guest that
 * restarts or stops beating has everything it owned dropped.
 *
 * @module
 */

import type { Region } from "../shm/region.ts";
import { type LogFn, rateLimited, silentLog } from "../log.ts";
import { FEATURE, MAX_QUEUE_SIZE, STATUS } from "../virtio.ts";
import { DeviceQueue } from "../virtqueue/device_queue.ts";
import {
  checkSplitRing,
  overlaps,
  splitRingBytes,
  type SplitRingLayout,
} from "../virtqueue/split_ring.ts";
import { AVAIL_IDX } from "../virtqueue/split_ring.ts";
import { DeviceRx } from "../packets/device_rx.ts";
import { DeviceTx } from "../packets/device_tx.ts";
import { CID } from "../packets/header.ts";
import { DeviceEvents, EVENT_ID } from "./event_queue.ts";
import type { WatchedRingWord } from "./layout.ts";
import {
  checkDriverFeatures,
  hasFeature,
  OFFERED_FEATURES,
  VSOCK_FEATURE,
} from "./features.ts";
import {
  encodeReason,
  H,
  HEADER_SIZE,
  LAYOUT_VERSION,
  MAGIC,
  MIN_TRANSPORT_REGION,
  NO_PEER,
  NOTIFY_MODE,
  Q,
  QUEUE,
  queueRecord,
  readReason,
  REASON_LENGTH,
} from "./layout.ts";

/** The region cannot be used as an ivsock region. */
export class TransportError extends Error {
  override name = "TransportError";
}

/** Device transport settings. */
export interface DeviceTransportOptions {
  /** The guest's CID: 3 or more, below 0xffffffff. */
  guestCid: number;
  /** Features to offer. @default {OFFERED_FEATURES} */
  features?: bigint;
  /** Largest queue size accepted. @default {1024} */
  maxQueueSize?: number;
  /** How the driver should wake the device. @default {"poll"} */
  notifyMode?: "poll" | "doorbell";
  /** The device's ivshmem peer id (doorbell mode). @default {0} */
  devicePeer?: number;
  /**
   * A driver whose heartbeat does not move for this long is presumed gone.
   * @default {3000}
   */
  driverTimeoutMs?: number;
  log?: LogFn;
}

/** Where the device stands. */
export type DeviceState =
  /** No driver, or a driver that has not finished negotiating. */
  | "waiting"
  /** The driver set DRIVER_OK and the queues are live. */
  | "running"
  /** Something broke; only a driver reset (status 0) gets out of it. */
  | "needs-reset"
  /** The driver set FAILED. */
  | "failed";

/** The queues of a running device. */
export interface ActiveQueues {
  rx: DeviceQueue;
  tx: DeviceQueue;
  event: DeviceQueue;
  /** Reads packets the driver sends. */
  deviceTx: DeviceTx;
  /** Writes packets to the driver. */
  deviceRx: DeviceRx;
  events: DeviceEvents;
  /** Negotiated features. */
  features: bigint;
  mergeable: boolean;
  /** The driver's vector to ring for queue activity (the rx queue record's). */
  driverVector: number;
}

/** A change the layer above must act on. */
export type TransportChange =
  | { type: "activated"; queues: ActiveQueues }
  | { type: "deactivated"; reason: string };

/** Default queue-size limit: as large as anyone uses (vhost-device: 1024). */
export const DEFAULT_MAX_QUEUE_SIZE = 1024;

/** Device role of the transport over one region. */
export class DeviceTransport {
  readonly region: Region;
  readonly guestCid: number;
  readonly offered: bigint;
  readonly maxQueueSize: number;
  readonly driverTimeoutMs: number;
  #log: LogFn;
  #limited: ReturnType<typeof rateLimited>;
  #state: DeviceState = "waiting";
  #queues: ActiveQueues | null = null;
  #lastSeq: number;
  #accepted = 0;
  #features = 0n;
  #lastDriverGeneration: number;
  #lastHeartbeat: number;
  #lastHeartbeatAt: number;
  /** TRANSPORT_RESET is owed to the next driver that reaches DRIVER_OK. */
  #owesTransportReset = false;

  private constructor(region: Region, options: DeviceTransportOptions) {
    this.region = region;
    this.guestCid = options.guestCid;
    this.offered = options.features ?? OFFERED_FEATURES;
    this.maxQueueSize = options.maxQueueSize ?? DEFAULT_MAX_QUEUE_SIZE;
    this.driverTimeoutMs = options.driverTimeoutMs ?? 3000;
    this.#log = options.log ?? silentLog;
    this.#limited = rateLimited(this.#log);
    // NaN matches no sequence number, so the first poll answers whatever
    // status the driver holds, including one it wrote while no device ran.
    this.#lastSeq = NaN;
    this.#lastDriverGeneration = region.load32(H.DRIVER_GENERATION);
    this.#lastHeartbeat = region.load32(H.DRIVER_HEARTBEAT);
    this.#lastHeartbeatAt = performance.now();
  }

  /**
   * Takes the device role over `region`. A zeroed region is initialised; an
   * ivsock region of this version is re-attached (the device generation is
   * bumped and, if a driver was active, it is asked to reset, and will get
   * a TRANSPORT_RESET event once running again).
   *
   * @throws {RangeError} for a bad CID or queue-size limit.
   * @throws {TransportError} for a region that is too small, holds something
   * else (wrong magic), or another layout version.
   */
  static attach(
    region: Region,
    options: DeviceTransportOptions,
  ): DeviceTransport {
    checkOptions(options);
    if (region.size < MIN_TRANSPORT_REGION) {
      throw new TransportError(
        `Region of ${region.size} bytes is too small: ivsock needs at least ${MIN_TRANSPORT_REGION}`,
      );
    }
    const magic = region.load32(H.MAGIC);
    let reattach = false;
    if (magic === MAGIC) {
      const version = region.getU16(H.VERSION);
      if (version !== LAYOUT_VERSION) {
        throw new TransportError(
          `Region holds ivsock layout version ${version}, this ivsock speaks version ${LAYOUT_VERSION}`,
        );
      }
      const recorded = region.getU32(H.REGION_SIZE);
      if (recorded !== region.size) {
        throw new TransportError(
          `Region header records ${recorded} bytes but the region is ${region.size}: it was resized under a running guest`,
        );
      }
      reattach = true;
    } else if (magic !== 0 || !isZero(region, 0, HEADER_SIZE)) {
      throw new TransportError(
        `Region does not start with the ivsock magic (found 0x${
          magic.toString(16).padStart(8, "0")
        }, expected 0x${
          MAGIC.toString(16)
        } "IVSK") and is not zeroed: another program may be using it`,
      );
    }
    const t = new DeviceTransport(region, options);
    t.#writeDeviceFields(options, reattach);
    return t;
  }

  /** Where the device stands. */
  get state(): DeviceState {
    return this.#state;
  }

  /** The live queues while running. */
  get queues(): ActiveQueues | null {
    return this.#queues;
  }

  /** The current device generation. */
  get generation(): number {
    return this.region.load32(H.DEVICE_GENERATION);
  }

  /** Status bits the device has accepted (what DEVICE_STATUS shows). */
  get status(): number {
    return this.region.load32(H.DEVICE_STATUS);
  }

  /** The reason text in the header (why NEEDS_RESET or a refusal). */
  get reason(): string {
    return readReason(this.region.span(H.REASON, REASON_LENGTH));
  }

  /** Words whose change means the device should look again. */
  watchedWords(): WatchedRingWord[] {
    const words: WatchedRingWord[] = [
      { offset: H.STATUS_SEQ, width: 4 },
      { offset: H.DRIVER_GENERATION, width: 4 },
    ];
    const q = this.#queues;
    if (q !== null) {
      for (const name of ["tx", "rx", "event"] as const) {
        const offset = q[name].layout.avail + AVAIL_IDX;
        words.push({ offset, width: 2, queue: name });
      }
    }
    return words;
  }

  /** Marks the device alive; call at least every few hundred ms. */
  beat(): void {
    this.region.add32(H.DEVICE_HEARTBEAT, 1);
  }

  /**
   * Looks at the driver's status, generation and heartbeat, and answers a
   * status change. Returns what the layer above must do, or `null`.
   */
  poll(now = performance.now()): TransportChange | null {
    const r = this.region;
    const generation = r.load32(H.DRIVER_GENERATION);
    if (generation !== this.#lastDriverGeneration) {
      this.#lastDriverGeneration = generation;
      this.#lastHeartbeatAt = now;
      if (this.#state !== "waiting") {
        // Whatever belonged to the old guest goes, even if it had not
        // reached DRIVER_OK; only live queues are news to the layer above.
        const change = this.#queues !== null
          ? this.#deactivate(
            `guest driver restarted (generation ${generation})`,
          )
          : null;
        // Nothing the old guest negotiated or broke carries over.
        this.#state = "waiting";
        this.#accepted = 0;
        this.#features = 0n;
        this.#setReason("");
        this.#writeStatus(0);
        this.#log("info", `guest driver restarted (generation ${generation})`);
        // The new driver starts with a reset; answer it below if it has.
        return this.#handleStatus() ?? change;
      }
    }
    const heartbeat = r.load32(H.DRIVER_HEARTBEAT);
    if (heartbeat !== this.#lastHeartbeat) {
      this.#lastHeartbeat = heartbeat;
      this.#lastHeartbeatAt = now;
    } else if (
      this.#state === "running" &&
      now - this.#lastHeartbeatAt > this.driverTimeoutMs
    ) {
      return this.fail(
        `guest driver stopped responding (no heartbeat for ${
          Math.round(now - this.#lastHeartbeatAt)
        } ms)`,
      );
    }
    return this.#handleStatus();
  }

  /**
   * Stops using the queues and marks the device NEEDS_RESET with `reason`
   * (a broken ring, a dead driver). The driver must reset to continue.
   */
  fail(reason: string): TransportChange | null {
    this.#log("warn", `device needs reset: ${reason}`);
    const change = this.#queues !== null ? this.#deactivate(reason) : null;
    this.#state = "needs-reset";
    this.#setReason(reason);
    this.#writeStatus(this.#accepted | STATUS.NEEDS_RESET);
    return change;
  }

  /** Fails with NEEDS_RESET in answer to status write `seq`, acknowledging it. */
  #refuse(reason: string, seq: number): TransportChange | null {
    const change = this.fail(reason);
    this.region.store32(H.STATUS_ACK, seq);
    return change;
  }

  /** Logs a dropped packet or chain, at most a few per second per kind. */
  logDrop(reason: string): void {
    this.#limited(reason.split(":")[0] ?? reason, "warn", reason);
  }

  #handleStatus(): TransportChange | null {
    const r = this.region;
    const seq = r.load32(H.STATUS_SEQ);
    if (seq === this.#lastSeq) return null;
    this.#lastSeq = seq;
    const s = r.load32(H.DRIVER_STATUS);
    let change: TransportChange | null = null;

    if (s === 0) {
      if (this.#queues !== null) {
        change = this.#deactivate("driver reset the device");
      }
      this.#state = "waiting";
      this.#accepted = 0;
      this.#features = 0n;
      this.#setReason("");
      this.#ack(0, seq);
      return change;
    }
    if (this.#state === "needs-reset") {
      // Only a reset clears NEEDS_RESET; keep answering with it.
      this.#ack(this.#accepted | STATUS.NEEDS_RESET, seq);
      return null;
    }
    if (this.#state === "failed") {
      // FAILED lasts until a reset, like NEEDS_RESET.
      this.#ack(this.#accepted, seq);
      return null;
    }
    if (s & STATUS.FAILED) {
      if (this.#queues !== null) {
        change = this.#deactivate("driver marked the device FAILED");
      }
      this.#state = "failed";
      this.#accepted |= STATUS.FAILED;
      this.#log("warn", "guest driver gave up on the device (FAILED)");
      this.#ack(this.#accepted, seq);
      return change;
    }
    const known = STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FEATURES_OK |
      STATUS.DRIVER_OK;
    const wanted = s & known;
    if ((this.#accepted & ~wanted) !== 0) {
      return this.#refuse(
        `driver cleared status bits 0x${
          (this.#accepted & ~wanted).toString(16)
        } without a reset`,
        seq,
      );
    }
    let accepted = this.#accepted |
      (wanted & (STATUS.ACKNOWLEDGE | STATUS.DRIVER));
    if ((wanted & STATUS.FEATURES_OK) && !(accepted & STATUS.FEATURES_OK)) {
      const reason = this.#acceptFeatures();
      if (reason === null) accepted |= STATUS.FEATURES_OK;
      else {
        // virtio 3.1.1: the device refuses by leaving FEATURES_OK clear.
        this.#log("warn", `refused the guest's features: ${reason}`);
        this.#setReason(reason);
      }
    }
    if ((wanted & STATUS.DRIVER_OK) && !(accepted & STATUS.DRIVER_OK)) {
      if (!(accepted & STATUS.FEATURES_OK)) {
        this.#accepted = accepted;
        return this.#refuse(
          "driver set DRIVER_OK before the device accepted FEATURES_OK",
          seq,
        );
      }
      const reason = this.#activate();
      if (reason !== null) {
        this.#accepted = accepted;
        return this.#refuse(`bad queue configuration: ${reason}`, seq);
      }
      accepted |= STATUS.DRIVER_OK;
      this.#state = "running";
      // Judge the driver's liveness from now on, not from before it spent
      // time setting up.
      this.#lastHeartbeatAt = performance.now();
      change = { type: "activated", queues: this.#queues! };
      if (this.#owesTransportReset) {
        this.#owesTransportReset = false;
        this.#queues!.events.send(EVENT_ID.TRANSPORT_RESET);
        this.#queues!.events.flush();
      }
      this.#log("info", "guest driver is running", {
        features: `0x${this.#features.toString(16)}`,
        mergeable: this.#queues!.mergeable,
      });
    }
    this.#accepted = accepted;
    this.#ack(accepted, seq);
    return change;
  }

  #acceptFeatures(): string | null {
    const features = this.region.getU64(H.DRIVER_FEATURES);
    const reason = checkDriverFeatures(this.offered, features);
    if (reason === null) this.#features = features;
    return reason;
  }

  /** Validates the queue configuration and builds the queues. */
  #activate(): string | null {
    const r = this.region;
    const poolStart = r.load32(H.POOL_OFFSET);
    const poolSize = r.load32(H.POOL_SIZE);
    if (
      poolSize === 0 || poolStart < HEADER_SIZE || poolStart + poolSize > r.size
    ) {
      return `buffer pool at ${poolStart} (+${poolSize}) must be non-empty and lie between the header (${HEADER_SIZE}) and the end of the region (${r.size})`;
    }
    const names = ["rx", "tx", "event"];
    const layouts: SplitRingLayout[] = [];
    for (let i = 0; i < 3; i++) {
      const at = queueRecord(i);
      const name = names[i]!;
      if (r.getU16(at + Q.ENABLE) !== 1) return `${name} queue is not enabled`;
      const size = r.getU16(at + Q.SIZE);
      if (size > this.maxQueueSize) {
        return `${name} queue size ${size} exceeds the device's limit ${this.maxQueueSize}`;
      }
      const layout = {
        size,
        desc: r.getOffset64(at + Q.DESC),
        avail: r.getOffset64(at + Q.DRIVER),
        used: r.getOffset64(at + Q.DEVICE),
      };
      const reason = checkSplitRing(layout, r.size);
      if (reason !== null) return `${name} queue: ${reason}`;
      const bytes = splitRingBytes(size);
      for (
        const [part, off, len] of [
          ["descriptor table", layout.desc, bytes.desc],
          ["available ring", layout.avail, bytes.avail],
          ["used ring", layout.used, bytes.used],
        ] as const
      ) {
        if (off < HEADER_SIZE) {
          return `${name} ${part} at ${off} overlaps the header`;
        }
        if (overlaps(off, len, poolStart, poolSize)) {
          return `${name} ${part} at ${off} overlaps the buffer pool`;
        }
        for (let j = 0; j < layouts.length; j++) {
          const o = layouts[j]!;
          const ob = splitRingBytes(o.size);
          if (
            overlaps(off, len, o.desc, ob.desc) ||
            overlaps(off, len, o.avail, ob.avail) ||
            overlaps(off, len, o.used, ob.used)
          ) {
            return `${name} ${part} at ${off} overlaps the ${names[j]} queue`;
          }
        }
      }
      layouts.push(layout);
    }

    const eventIdx = hasFeature(this.#features, FEATURE.RING_EVENT_IDX);
    const indirect = hasFeature(this.#features, FEATURE.RING_INDIRECT_DESC);
    const mergeable = hasFeature(this.#features, VSOCK_FEATURE.MRG_RXBUF);
    const window = { start: poolStart, end: poolStart + poolSize };
    const onDrop = (reason: string) => this.logDrop(reason);
    const make = (
      i: number,
      name: string,
      direction: "device-reads" | "device-writes",
    ) =>
      new DeviceQueue(r, layouts[i]!, {
        name,
        direction,
        eventIdx,
        indirect,
        window,
        onDrop,
      });
    const rx = make(QUEUE.RX, "rx", "device-writes");
    const tx = make(QUEUE.TX, "tx", "device-reads");
    const event = make(QUEUE.EVENT, "event", "device-writes");
    this.#queues = {
      rx,
      tx,
      event,
      deviceTx: new DeviceTx(tx, onDrop),
      deviceRx: new DeviceRx(rx, { mergeable, onDrop }),
      events: new DeviceEvents(event, onDrop),
      features: this.#features,
      mergeable,
      driverVector: r.getU32(queueRecord(QUEUE.RX) + Q.VECTOR),
    };
    return null;
  }

  #deactivate(reason: string): TransportChange {
    this.#queues = null;
    if (this.#state === "running") {
      this.#log("info", `guest driver stopped: ${reason}`);
    }
    return { type: "deactivated", reason };
  }

  #writeDeviceFields(o: DeviceTransportOptions, reattach: boolean): void {
    const r = this.region;
    if (!reattach) {
      r.fill(0, HEADER_SIZE);
      r.setU16(H.VERSION, LAYOUT_VERSION);
      r.setU16(H.HEADER_SIZE, HEADER_SIZE);
      r.setU32(H.REGION_SIZE, r.size);
      r.store32(H.DRIVER_PEER, NO_PEER);
    }
    r.setU32(H.MAX_QUEUE_SIZE, this.maxQueueSize);
    r.setU64(H.DEVICE_FEATURES, this.offered);
    r.store32(H.CONFIG_GENERATION, (r.load32(H.CONFIG_GENERATION) + 1) | 1);
    r.setU64(H.GUEST_CID, BigInt(this.guestCid));
    r.store32(H.CONFIG_GENERATION, r.load32(H.CONFIG_GENERATION) + 1);
    r.store32(H.DEVICE_PEER, o.devicePeer ?? 0);
    r.store32(
      H.NOTIFY_MODE,
      o.notifyMode === "doorbell" ? NOTIFY_MODE.DOORBELL : NOTIFY_MODE.POLL,
    );
    const generation = r.load32(H.DEVICE_GENERATION) + 1;
    r.store32(H.DEVICE_GENERATION, generation);
    // A driver has used this region before: whatever it had open through
    // the previous device is gone, so it hears TRANSPORT_RESET once running.
    this.#owesTransportReset = reattach && r.load32(H.DRIVER_GENERATION) !== 0;
    if (reattach && r.load32(H.DRIVER_STATUS) !== 0) {
      // The previous device process died with a driver attached: nothing it
      // held (popped chains, connections) survives, so the driver must set
      // the queues up again.
      this.#state = "needs-reset";
      const reason = `device restarted (generation ${generation})`;
      this.#setReason(reason);
      this.#writeStatus(STATUS.NEEDS_RESET);
      this.#log(
        "info",
        `re-attached to a region with a driver present: ${reason}`,
      );
    } else {
      this.#setReason("");
      this.#writeStatus(0);
    }
    // Written last: a driver waiting for the device sees a complete header.
    r.store32(H.MAGIC, MAGIC);
  }

  #ack(status: number, seq: number): void {
    this.#writeStatus(status);
    this.region.store32(H.STATUS_ACK, seq);
  }

  #writeStatus(status: number): void {
    this.region.store32(H.DEVICE_STATUS, status);
  }

  #setReason(reason: string): void {
    this.region.write(H.REASON, encodeReason(reason));
  }
}

function checkOptions(o: DeviceTransportOptions): void {
  if (
    !Number.isInteger(o.guestCid) || o.guestCid <= CID.HOST ||
    o.guestCid >= 0xffffffff
  ) {
    throw new RangeError(
      `Guest CID must be an integer from 3 to 4294967294, received ${o.guestCid}`,
    );
  }
  const max = o.maxQueueSize ?? DEFAULT_MAX_QUEUE_SIZE;
  if (
    !Number.isInteger(max) || max < 1 || max > MAX_QUEUE_SIZE ||
    (max & (max - 1)) !== 0
  ) {
    throw new RangeError(
      `Queue size limit must be a power of two from 1 to ${MAX_QUEUE_SIZE}, received ${max}`,
    );
  }
}

function isZero(region: Region, offset: number, length: number): boolean {
  return region.span(offset, length).every((b) => b === 0);
}
