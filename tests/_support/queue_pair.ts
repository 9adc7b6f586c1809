/**
 * A driver and a device sharing one in-memory region: both queues, both
 * roles, and helpers that move a byte stream across in packets. Used by the
 * virtqueue and packet tests.
 *
 * @module
 */

import { Region } from "../../device/shm/region.ts";
import { DeviceQueue } from "../../device/virtqueue/device_queue.ts";
import { DriverQueue } from "../../device/virtqueue/driver_queue.ts";
import { alignUp, packSplitRing } from "../../device/virtqueue/split_ring.ts";
import { DeviceRx } from "../../device/packets/device_rx.ts";
import { DeviceTx } from "../../device/packets/device_tx.ts";
import { DriverRx } from "../../device/packets/driver_rx.ts";
import { DriverTx } from "../../device/packets/driver_tx.ts";
import { ByteRing } from "../../device/packets/byte_ring.ts";
import {
  MAX_PAYLOAD,
  newHeader,
  OP,
  TYPE,
} from "../../device/packets/header.ts";

export interface QueuePairOptions {
  queueSize: number;
  mergeable: boolean;
  /** Receive buffer size posted by the driver. */
  bufferSize: number;
  eventIdx?: boolean;
  indirect?: boolean;
  splitHeader?: boolean;
  descriptorBytes?: number;
  /** Bytes for receive buffers (default: enough for the whole queue, at most 4 MiB). */
  rxBytes?: number;
  /**
   * The region's memory: a `SharedArrayBuffer` (default, as `Region.alloc`
   * gives), or a plain `ArrayBuffer`, the kind a mapped file is. V8 copies
   * into and out of shared memory at about half the speed, so benchmarks
   * use the plain kind.
   */
  memory?: "shared" | "plain";
}

/** Everything a test needs to drive both sides by hand. */
export interface QueuePair {
  region: Region;
  driverTxQ: DriverQueue;
  driverRxQ: DriverQueue;
  deviceTxQ: DeviceQueue;
  deviceRxQ: DeviceQueue;
  driverTx: DriverTx;
  driverRx: DriverRx;
  deviceTx: DeviceTx;
  deviceRx: DeviceRx;
  /** Reasons the device dropped something. */
  deviceDrops: string[];
  /** Reasons the driver rejected something. */
  driverErrors: string[];
  bufferStart: number;
}

const TX_SPACE = 4 * (MAX_PAYLOAD + 64);

/** Builds a region with both queues set up from both sides. */
export function makeQueuePair(o: QueuePairOptions): QueuePair {
  const q = o.queueSize;
  const txRing = packSplitRing(0, q);
  const rxRing = packSplitRing(txRing.end, q);
  const bufferStart = alignUp(rxRing.end, 4096);
  const rxBytes = o.rxBytes ??
    Math.min(q * o.bufferSize, 4 * 1024 * 1024);
  let size = 4096;
  while (size < bufferStart + rxBytes + TX_SPACE) size *= 2;
  const region = o.memory === "plain"
    ? new Region(new ArrayBuffer(size))
    : Region.alloc(size);
  const deviceDrops: string[] = [];
  const driverErrors: string[] = [];
  const eventIdx = o.eventIdx ?? false;
  const indirect = o.indirect ?? false;
  const window = { start: bufferStart, end: size };

  const driverTxQ = new DriverQueue(region, txRing.layout, {
    name: "tx",
    eventIdx,
  });
  const driverRxQ = new DriverQueue(region, rxRing.layout, {
    name: "rx",
    eventIdx,
  });
  const deviceTxQ = new DeviceQueue(region, txRing.layout, {
    name: "tx",
    direction: "device-reads",
    eventIdx,
    indirect,
    window,
    onDrop: (r) => deviceDrops.push(r),
  });
  const deviceRxQ = new DeviceQueue(region, rxRing.layout, {
    name: "rx",
    direction: "device-writes",
    eventIdx,
    indirect,
    window,
    onDrop: (r) => deviceDrops.push(r),
  });
  const rxEnd = bufferStart + rxBytes;
  const driverRx = new DriverRx(driverRxQ, {
    mergeable: o.mergeable,
    bufferSize: o.bufferSize,
    window: { start: bufferStart, end: rxEnd },
    ...(o.descriptorBytes === undefined
      ? {}
      : { descriptorBytes: o.descriptorBytes }),
    onError: (r) => driverErrors.push(r),
  });
  const driverTx = new DriverTx(
    driverTxQ,
    new ByteRing(rxEnd, size - rxEnd, q),
    { splitHeader: o.splitHeader ?? false },
  );
  const deviceTx = new DeviceTx(deviceTxQ, (r) => deviceDrops.push(r));
  const deviceRx = new DeviceRx(deviceRxQ, {
    mergeable: o.mergeable,
    onDrop: (r) => deviceDrops.push(r),
  });
  driverRx.fill();
  driverRxQ.publish();
  return {
    region,
    driverTxQ,
    driverRxQ,
    deviceTxQ,
    deviceRxQ,
    driverTx,
    driverRx,
    deviceTx,
    deviceRx,
    deviceDrops,
    driverErrors,
    bufferStart,
  };
}

/** A stream-data header from the guest (CID 3) to the host (CID 2). */
export function dataHeader() {
  const h = newHeader();
  h.srcCid = 3;
  h.dstCid = 2;
  h.srcPort = 1024;
  h.dstPort = 80;
  h.type = TYPE.STREAM;
  h.op = OP.RW;
  return h;
}

/**
 * Sends `data` from driver to device in packets of random size (at most
 * `maxPacket`), pumping the device whenever the driver runs out of space.
 * Returns what the device received, concatenated, and the packet count.
 */
export function driverToDevice(
  p: QueuePair,
  data: Uint8Array,
  nextSize: () => number,
): { received: Uint8Array; packets: number } {
  const received = new Uint8Array(data.length);
  let got = 0;
  let packets = 0;
  const h = dataHeader();
  const drain = () => {
    while (p.deviceTx.next()) {
      got += p.deviceTx.packet.copyPayload(received, got);
      packets++;
    }
    p.deviceTx.flush();
  };
  let sent = 0;
  let first = true;
  while (sent < data.length || first) {
    first = false;
    const n = Math.min(nextSize(), data.length - sent, MAX_PAYLOAD);
    let tries = 0;
    while (!p.driverTx.send(h, data.subarray(sent, sent + n))) {
      p.driverTxQ.publish();
      drain();
      if (++tries > 3) {
        throw new Error("driver could not send after the device drained");
      }
    }
    sent += n;
    if (p.driverTxQ.freeCount === 0) {
      p.driverTxQ.publish();
      drain();
    }
  }
  p.driverTxQ.publish();
  drain();
  return { received: received.subarray(0, got), packets };
}

/**
 * Sends `data` from device to driver, each packet as large as the posted
 * buffers allow (at most `nextSize()`), pumping the driver when the device
 * runs out of buffers. Returns what the driver received.
 */
export function deviceToDriver(
  p: QueuePair,
  data: Uint8Array,
  nextSize: () => number,
): { received: Uint8Array; packets: number } {
  const received = new Uint8Array(data.length);
  let got = 0;
  let packets = 0;
  const h = dataHeader();
  const drain = () => {
    while (p.driverRx.next()) {
      got += p.driverRx.packet.copyPayload(received, got);
      packets++;
    }
    p.driverRxQ.publish();
  };
  let sent = 0;
  let first = true;
  while (sent < data.length || first) {
    first = false;
    let room = p.deviceRx.room();
    let tries = 0;
    while (room < 0 || (room === 0 && sent < data.length)) {
      drain();
      room = p.deviceRx.room();
      if (++tries > 3) {
        throw new Error(
          `device has no room after the driver drained (room ${room})`,
        );
      }
    }
    const n = Math.min(nextSize(), data.length - sent, room);
    if (!p.deviceRx.put(h, data.subarray(sent, sent + n))) {
      throw new Error("put() refused a packet that room() allowed");
    }
    sent += n;
  }
  drain();
  return { received: received.subarray(0, got), packets };
}
