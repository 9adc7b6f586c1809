/**
 * In-process ring throughput: how fast packets cross the split virtqueue and
 * the mergeable-buffer code, in one process, against copying the same bytes
 * twice with `TypedArray.set` (the two copies the ring path makes: into the
 * shared buffers and out of them). Both sides touch buffers of the same size
 * so cache effects match.
 *
 * @module
 */

import type { Scenario } from "./_harness.ts";
import {
  dataHeader,
  makeQueuePair,
  type QueuePair,
} from "../tests/_support/queue_pair.ts";
import { MAX_PAYLOAD } from "../device/packets/header.ts";

const TOTAL = 256 * 1024 * 1024;
const MIB = 1024 * 1024;

function mibPerSecond(bytes: number, ms: number): number {
  return bytes / MIB / (ms / 1000);
}

/** Copies TOTAL bytes twice through a region-sized scratch area. */
function copyTwice(regionBytes: number): () => number {
  const src = new Uint8Array(MAX_PAYLOAD);
  const mid = new Uint8Array(regionBytes);
  const dst = new Uint8Array(MAX_PAYLOAD);
  return () => {
    const t0 = performance.now();
    let at = 0;
    for (let n = 0; n < TOTAL; n += MAX_PAYLOAD) {
      if (at + MAX_PAYLOAD > mid.length) at = 0;
      mid.set(src, at);
      dst.set(mid.subarray(at, at + MAX_PAYLOAD));
      at += MAX_PAYLOAD;
    }
    return mibPerSecond(TOTAL, performance.now() - t0);
  };
}

/** Device to driver: the device fills rx buffers, the driver copies out. */
function deviceToDriver(p: QueuePair): () => number {
  const src = new Uint8Array(MAX_PAYLOAD);
  const dst = new Uint8Array(MAX_PAYLOAD);
  const h = dataHeader();
  return () => {
    const t0 = performance.now();
    let sent = 0;
    while (sent < TOTAL) {
      const room = p.deviceRx.room();
      if (room > 0) {
        const n = Math.min(room, MAX_PAYLOAD);
        p.deviceRx.put(h, src.subarray(0, n));
        sent += n;
        continue;
      }
      while (p.driverRx.next()) p.driverRx.packet.copyPayload(dst);
      p.driverRxQ.publish();
    }
    while (p.driverRx.next()) p.driverRx.packet.copyPayload(dst);
    p.driverRxQ.publish();
    return mibPerSecond(sent, performance.now() - t0);
  };
}

/** Driver to device: the driver fills tx buffers, the device copies out. */
function driverToDevice(p: QueuePair): () => number {
  const src = new Uint8Array(MAX_PAYLOAD);
  const dst = new Uint8Array(MAX_PAYLOAD);
  const h = dataHeader();
  const drain = () => {
    while (p.deviceTx.next()) p.deviceTx.packet.copyPayload(dst);
    p.deviceTx.flush();
  };
  return () => {
    const t0 = performance.now();
    let sent = 0;
    while (sent < TOTAL) {
      if (p.driverTx.send(h, src)) {
        sent += src.length;
        continue;
      }
      p.driverTxQ.publish();
      drain();
    }
    p.driverTxQ.publish();
    drain();
    return mibPerSecond(sent, performance.now() - t0);
  };
}

function scenario(
  direction: "device to driver" | "driver to device",
  mergeable: boolean,
  bufferSize: number,
): Scenario {
  // Plain memory, as a mapped region file is: V8 copies into and out of a
  // SharedArrayBuffer more slowly (4 KiB chunks, into and back out: 9,466
  // against 15,086 MiB/s), which the baseline's plain copies would not pay.
  const p = makeQueuePair({
    queueSize: 256,
    mergeable,
    bufferSize,
    memory: "plain",
  });
  return {
    name: `ring ${direction}, ${mergeable ? "mergeable" : "one-buffer"} ${
      bufferSize / 1024
    } KiB rx buffers`,
    unit: "MiB/s",
    subject: direction === "device to driver"
      ? deviceToDriver(p)
      : driverToDevice(p),
    baselines: [{
      name: "two TypedArray.set copies",
      run: copyTwice(p.region.size),
    }],
  };
}

/** The ring scenarios. */
export function ringScenarios(): Scenario[] {
  return [
    scenario("device to driver", true, 4096),
    scenario("device to driver", true, 65536),
    scenario("device to driver", false, 4096),
    scenario("device to driver", false, 65536),
    scenario("driver to device", true, 4096),
  ];
}
