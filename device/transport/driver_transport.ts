/**
 * The driver side of the ivsock transport (the guest agent's role): waits
 * for the device, walks ACKNOWLEDGE -> DRIVER -> FEATURES_OK -> DRIVER_OK,
 * lays out its rings and buffers in the region, and notices a device that
 * restarts, asks for a reset, or stops beating.
 *
 * @module
 */

import type { Region } from "../shm/region.ts";
import { type LogFn, silentLog } from "../log.ts";
import { FEATURE, featureBit, STATUS } from "../virtio.ts";
import { DriverQueue } from "../virtqueue/driver_queue.ts";
import {
  alignUp,
  isValidQueueSize,
  packSplitRing,
  type SplitRingLayout,
} from "../virtqueue/split_ring.ts";
import { ByteRing } from "../packets/byte_ring.ts";
import { DriverRx } from "../packets/driver_rx.ts";
import { DriverTx } from "../packets/driver_tx.ts";
import { HDR_LEN, MAX_PAYLOAD, MRG_HDR_LEN } from "../packets/header.ts";
import { DriverEvents } from "./event_queue.ts";
import {
  featureBits,
  featureName,
  hasFeature,
  VSOCK_FEATURE,
} from "./features.ts";
import { TransportError } from "./device_transport.ts";
import {
  DEVICE_VECTOR,
  H,
  HEADER_SIZE,
  LAYOUT_VERSION,
  MAGIC,
  NO_PEER,
  NOTIFY_MODE,
  Q,
  QUEUE,
  queueRecord,
  readReason,
  REASON_LENGTH,
  type WatchedRingWord,
} from "./layout.ts";

/** Driver transport settings. */
export interface DriverTransportOptions {
  /** Descriptors per rx and tx queue; capped by the device's limit. @default {256} */
  queueSize?: number;
  /** Bytes per receive buffer. @default {4096} */
  rxBufferSize?: number;
  /** Negotiate MRG_RXBUF when offered. @default {true} */
  mergeable?: boolean;
  /** Negotiate EVENT_IDX when offered. @default {true} */
  eventIdx?: boolean;
  /** This driver's ivshmem peer id (IVPosition), if it has one. */
  driverPeer?: number;
  /**
   * Rings the device's `vector` (doorbell mode): used after each status
   * write so the device answers at once instead of at its next poll.
   */
  ringDevice?: (vector: number) => void;
  /** A device that does not answer or beat for this long is presumed gone. @default {3000} */
  deviceTimeoutMs?: number;
  log?: LogFn;
}

/** The queues of a running driver. */
export interface DriverQueues {
  rx: DriverQueue;
  tx: DriverQueue;
  event: DriverQueue;
  driverTx: DriverTx;
  driverRx: DriverRx;
  events: DriverEvents;
  features: bigint;
  mergeable: boolean;
  guestCid: number;
  /** Largest payload the tx space can carry in one packet. */
  maxTxPayload: number;
}

/** Something the layer above must act on. */
export type DriverChange =
  /** The device went away or asked for a reset: drop everything, then renegotiate. */
  { type: "lost"; reason: string };

/** Event-queue buffers posted (Linux posts 8). */
const EVENT_BUFFERS = 8;
const EVENT_QUEUE_SIZE = 8;

/** Driver role of the transport over one region. */
export class DriverTransport {
  readonly region: Region;
  readonly options:
    & Required<
      Omit<DriverTransportOptions, "driverPeer" | "log" | "ringDevice">
    >
    & {
      driverPeer: number;
    };
  #ringDevice: ((vector: number) => void) | undefined;
  #log: LogFn;
  #queues: DriverQueues | null = null;
  #seq = 0;
  #deviceGeneration = 0;
  #lastDeviceBeat = 0;
  #lastDeviceBeatAt = 0;

  constructor(region: Region, options: DriverTransportOptions = {}) {
    this.region = region;
    this.options = {
      queueSize: options.queueSize ?? 256,
      rxBufferSize: options.rxBufferSize ?? 4096,
      mergeable: options.mergeable ?? true,
      eventIdx: options.eventIdx ?? true,
      deviceTimeoutMs: options.deviceTimeoutMs ?? 3000,
      driverPeer: options.driverPeer ?? NO_PEER,
    };
    this.#log = options.log ?? silentLog;
    this.#ringDevice = options.ringDevice;
    if (!isValidQueueSize(this.options.queueSize)) {
      throw new RangeError(
        `Queue size must be a power of two from 1 to 32768, received ${this.options.queueSize}`,
      );
    }
  }

  /** The live queues once negotiated. */
  get queues(): DriverQueues | null {
    return this.#queues;
  }

  /** The device generation this driver negotiated with. */
  get deviceGeneration(): number {
    return this.#deviceGeneration;
  }

  /** Whether the device asked for doorbells. */
  get doorbell(): boolean {
    return this.region.load32(H.NOTIFY_MODE) === NOTIFY_MODE.DOORBELL;
  }

  /** The device's ivshmem peer id (whom to ring). */
  get devicePeer(): number {
    return this.region.load32(H.DEVICE_PEER);
  }

  /**
   * Waits for the device to initialise the region (up to `waitMs`), then
   * resets it and negotiates from scratch. Bumps the driver generation the
   * first time, so the device drops whatever an earlier driver left.
   *
   * @throws {TransportError} when the device does not appear or answer, the
   * layout version differs, or the device refuses the features or queues.
   */
  async start(waitMs = 10_000, signal?: AbortSignal): Promise<DriverQueues> {
    await this.#waitForDevice(waitMs, signal);
    this.region.add32(H.DRIVER_GENERATION, 1);
    return await this.negotiate(signal);
  }

  /** Resets the device and negotiates again (after a device restart or NEEDS_RESET). */
  async negotiate(signal?: AbortSignal): Promise<DriverQueues> {
    const r = this.region;
    this.#queues = null;
    this.#seq = r.load32(H.STATUS_SEQ);
    r.store32(H.DRIVER_PEER, this.options.driverPeer);
    const afterReset = await this.#setStatus(0, signal);
    if (afterReset !== 0) {
      throw new TransportError(
        `Device answered a reset with status 0x${
          afterReset.toString(16)
        } instead of 0`,
      );
    }
    this.#deviceGeneration = r.load32(H.DEVICE_GENERATION);
    await this.#setStatus(STATUS.ACKNOWLEDGE, signal);
    await this.#setStatus(STATUS.ACKNOWLEDGE | STATUS.DRIVER, signal);

    const offered = r.getU64(H.DEVICE_FEATURES);
    let wanted = featureBit(FEATURE.VERSION_1) |
      featureBit(VSOCK_FEATURE.STREAM) | featureBit(VSOCK_FEATURE.SEQPACKET);
    if (this.options.mergeable) wanted |= featureBit(VSOCK_FEATURE.MRG_RXBUF);
    if (this.options.eventIdx) wanted |= featureBit(FEATURE.RING_EVENT_IDX);
    const features = offered & wanted;
    if (!hasFeature(features, FEATURE.VERSION_1)) {
      await this.#setStatus(STATUS.FAILED, signal).catch(() => {});
      throw new TransportError(
        "Device does not offer VERSION_1; this driver needs it",
      );
    }
    r.setU64(H.DRIVER_FEATURES, features);
    const base = STATUS.ACKNOWLEDGE | STATUS.DRIVER;
    let status = await this.#setStatus(base | STATUS.FEATURES_OK, signal);
    if (!(status & STATUS.FEATURES_OK)) {
      throw new TransportError(
        `Device refused features ${
          featureBits(features).map(featureName).join(", ")
        }: ${this.#reason()}`,
      );
    }

    const queues = this.#layOut(features);
    status = await this.#setStatus(
      base | STATUS.FEATURES_OK | STATUS.DRIVER_OK,
      signal,
    );
    if (status & STATUS.NEEDS_RESET || !(status & STATUS.DRIVER_OK)) {
      throw new TransportError(
        `Device refused the queue configuration: ${this.#reason()}`,
      );
    }
    this.#lastDeviceBeat = r.load32(H.DEVICE_HEARTBEAT);
    this.#lastDeviceBeatAt = performance.now();
    this.#queues = queues;
    this.#log("info", "transport running", {
      features: `0x${features.toString(16)}`,
      mergeable: queues.mergeable,
      queueSize: queues.rx.layout.size,
      rxBufferSize: this.options.rxBufferSize,
    });
    return queues;
  }

  /** Marks the driver alive; call at least every few hundred ms. */
  beat(): void {
    this.region.add32(H.DRIVER_HEARTBEAT, 1);
  }

  /** Checks the device's generation, status and heartbeat. */
  poll(now = performance.now()): DriverChange | null {
    if (this.#queues === null) return null;
    const r = this.region;
    const generation = r.load32(H.DEVICE_GENERATION);
    if (generation !== this.#deviceGeneration) {
      return this.#lose(
        `device restarted (generation ${this.#deviceGeneration} -> ${generation})`,
      );
    }
    if (r.load32(H.DEVICE_STATUS) & STATUS.NEEDS_RESET) {
      return this.#lose(`device needs a reset: ${this.#reason()}`);
    }
    const beat = r.load32(H.DEVICE_HEARTBEAT);
    if (beat !== this.#lastDeviceBeat) {
      this.#lastDeviceBeat = beat;
      this.#lastDeviceBeatAt = now;
    } else if (now - this.#lastDeviceBeatAt > this.options.deviceTimeoutMs) {
      return this.#lose(
        `device stopped responding (no heartbeat for ${
          Math.round(now - this.#lastDeviceBeatAt)
        } ms)`,
      );
    }
    return null;
  }

  /** Words whose change the driver's waker should watch. */
  watchedWords(): WatchedRingWord[] {
    const words: WatchedRingWord[] = [
      { offset: H.DEVICE_STATUS, width: 4 },
      { offset: H.DEVICE_GENERATION, width: 4 },
    ];
    const q = this.#queues;
    if (q !== null) {
      for (const name of ["rx", "tx", "event"] as const) {
        words.push({ offset: q[name].layout.used + 2, width: 2, queue: name });
      }
    }
    return words;
  }

  /** Sets FAILED (the driver gives up), best effort. */
  async fail(signal?: AbortSignal): Promise<void> {
    this.#queues = null;
    await this.#setStatus(STATUS.FAILED, signal).catch(() => {});
  }

  #lose(reason: string): DriverChange {
    this.#queues = null;
    this.#log("warn", `transport lost: ${reason}`);
    return { type: "lost", reason };
  }

  /** Places rings and buffers after the header and writes the queue records. */
  #layOut(features: bigint): DriverQueues {
    const r = this.region;
    const max = r.getU32(H.MAX_QUEUE_SIZE);
    const size = Math.min(this.options.queueSize, max);
    if (!isValidQueueSize(size)) {
      throw new TransportError(
        `Device allows queues of at most ${max} descriptors`,
      );
    }
    const eventSize = Math.min(EVENT_QUEUE_SIZE, size);
    let at = HEADER_SIZE;
    const place = (n: number): SplitRingLayout => {
      const p = packSplitRing(at, n);
      at = p.end;
      return p.layout;
    };
    const rxLayout = place(size);
    const txLayout = place(size);
    const eventLayout = place(eventSize);
    const poolStart = alignUp(at, 4096);
    const poolEnd = r.size;
    const mergeable = hasFeature(features, VSOCK_FEATURE.MRG_RXBUF);
    const bufferSize = this.options.rxBufferSize;
    const min = mergeable ? MRG_HDR_LEN : HDR_LEN;
    if (
      !Number.isInteger(bufferSize) || bufferSize < min ||
      bufferSize > 65536 + min
    ) {
      throw new RangeError(
        `Receive buffer size must be from ${min} to ${
          65536 + min
        } bytes, received ${bufferSize}`,
      );
    }
    const eventBytes = alignUp(DriverEvents.bytesFor(EVENT_BUFFERS), 64);
    const free = poolEnd - poolStart - eventBytes;
    // Receive buffers get up to half the pool; transmit space the rest, which
    // must hold at least one full packet.
    const rxBytes = Math.min(
      size * bufferSize,
      Math.floor(free / 2 / bufferSize) * bufferSize,
    );
    const txStart = poolStart + eventBytes + rxBytes;
    const txBytes = poolEnd - txStart;
    if (rxBytes < bufferSize || txBytes < HDR_LEN + 1) {
      throw new TransportError(
        `Region of ${r.size} bytes is too small for ${size}-descriptor queues and ${bufferSize}-byte receive buffers`,
      );
    }
    const eventIdx = hasFeature(features, FEATURE.RING_EVENT_IDX);
    const rx = new DriverQueue(r, rxLayout, { name: "rx", eventIdx });
    const tx = new DriverQueue(r, txLayout, { name: "tx", eventIdx });
    const event = new DriverQueue(r, eventLayout, { name: "event", eventIdx });
    const onError = (e: string) => this.#log("warn", e);
    const driverRx = new DriverRx(rx, {
      mergeable,
      bufferSize,
      window: {
        start: poolStart + eventBytes,
        end: poolStart + eventBytes + rxBytes,
      },
      onError,
    });
    driverRx.fill();
    rx.publish();
    const events = new DriverEvents(event, poolStart, EVENT_BUFFERS, onError);
    const driverTx = new DriverTx(tx, new ByteRing(txStart, txBytes, size));
    r.store32(H.POOL_OFFSET, poolStart);
    r.store32(H.POOL_SIZE, poolEnd - poolStart);
    for (
      const [index, layout] of [[QUEUE.RX, rxLayout], [QUEUE.TX, txLayout], [
        QUEUE.EVENT,
        eventLayout,
      ]] as const
    ) {
      const rec = queueRecord(index);
      r.setU16(rec + Q.SIZE, layout.size);
      r.setU32(rec + Q.VECTOR, 1);
      r.setOffset64(rec + Q.DESC, layout.desc);
      r.setOffset64(rec + Q.DRIVER, layout.avail);
      r.setOffset64(rec + Q.DEVICE, layout.used);
      r.setU16(rec + Q.ENABLE, 1);
    }
    return {
      rx,
      tx,
      event,
      driverTx,
      driverRx,
      events,
      features,
      mergeable,
      guestCid: this.#readGuestCid(),
      maxTxPayload: Math.min(MAX_PAYLOAD, txBytes - HDR_LEN),
    };
  }

  /** Writes a status, then waits for the device to answer it. */
  async #setStatus(status: number, signal?: AbortSignal): Promise<number> {
    const r = this.region;
    const seq = (this.#seq + 1) >>> 0;
    this.#seq = seq;
    r.store32(H.DRIVER_STATUS, status);
    r.store32(H.STATUS_SEQ, seq);
    this.#ringDevice?.(DEVICE_VECTOR.CONFIG);
    const deadline = performance.now() + this.options.deviceTimeoutMs;
    while (r.load32(H.STATUS_ACK) !== seq) {
      signal?.throwIfAborted();
      if (performance.now() > deadline) {
        throw new TransportError(
          `Device did not answer status 0x${
            status.toString(16)
          } within ${this.options.deviceTimeoutMs} ms: is the ivsock device running on this region?`,
        );
      }
      await sleep(1);
    }
    return r.load32(H.DEVICE_STATUS);
  }

  async #waitForDevice(waitMs: number, signal?: AbortSignal): Promise<void> {
    const r = this.region;
    const deadline = performance.now() + waitMs;
    let said = false;
    for (;;) {
      signal?.throwIfAborted();
      const magic = r.load32(H.MAGIC);
      if (magic === MAGIC) break;
      if (magic !== 0) {
        throw new TransportError(
          `Region does not start with the ivsock magic (found 0x${
            magic.toString(16)
          }): it is not an ivsock region`,
        );
      }
      if (performance.now() > deadline) {
        throw new TransportError(
          `No ivsock device initialised the region within ${waitMs} ms: start 'ivsock serve' on the host`,
        );
      }
      if (!said) {
        this.#log(
          "info",
          "waiting for the ivsock device to initialise the region",
        );
        said = true;
      }
      await sleep(10);
    }
    const version = r.getU16(H.VERSION);
    if (r.getU16(H.HEADER_SIZE) !== HEADER_SIZE) {
      throw new TransportError(
        `Region header size is ${
          r.getU16(H.HEADER_SIZE)
        }, this driver expects ${HEADER_SIZE}`,
      );
    }
    if (version !== LAYOUT_VERSION) {
      throw new TransportError(
        `Region uses ivsock layout version ${version}; this driver speaks ${LAYOUT_VERSION}`,
      );
    }
    if (r.getU32(H.REGION_SIZE) !== r.size) {
      throw new TransportError(
        `Region header says ${
          r.getU32(H.REGION_SIZE)
        } bytes but ${r.size} are mapped`,
      );
    }
  }

  /**
   * guest_cid, read consistently: the device makes CONFIG_GENERATION odd
   * while it writes config, so retry until it is even and unchanged.
   */
  #readGuestCid(): number {
    const r = this.region;
    for (let tries = 0; tries < 1000; tries++) {
      const before = r.load32(H.CONFIG_GENERATION);
      if (before % 2 !== 0) continue;
      const cid = r.getU64(H.GUEST_CID);
      if (r.load32(H.CONFIG_GENERATION) !== before) continue;
      if (cid < 3n || cid >= 0xffffffffn) {
        throw new TransportError(
          `Device reports guest CID ${cid}, which is reserved or out of range`,
        );
      }
      return Number(cid);
    }
    throw new TransportError("Device config kept changing while it was read");
  }

  #reason(): string {
    return readReason(this.region.span(H.REASON, REASON_LENGTH)) ||
      "no reason given";
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
