/**
 * The device as the admin API reports it: status bits by name, negotiated
 * features, guest CID, queues, notification mode and generations.
 *
 * @module
 */

import { H } from "../device/transport/layout.ts";
import { featureBits, featureName } from "../device/transport/features.ts";
import { STATUS } from "../device/virtio.ts";
import type { Sidecar } from "../proxy/sidecar.ts";

/** Counters of one queue. */
export interface QueueInfo {
  size: number;
  pending: number;
  popped: number;
  dropped: number;
  used: number;
  notifications: number;
  broken: string | null;
}

/** What `GET /v1/device` returns. */
export interface DeviceInfo {
  state: string;
  reason: string;
  region: { path: string; size: number };
  guestCid: number;
  status: { value: number; bits: string[] };
  features: { offered: string[]; negotiated: string[] };
  notification: "poll" | "doorbell";
  generations: { device: number; driver: number };
  queues: Record<"rx" | "tx" | "event", QueueInfo> | null;
  connections: number;
}

const STATUS_NAMES = Object.entries(STATUS) as Array<[string, number]>;

/** Reads the device's state now. */
export function deviceInfo(sidecar: Sidecar): DeviceInfo {
  const t = sidecar.transport;
  const r = t.region;
  const status = t.status;
  const q = t.queues;
  const queue = (dq: NonNullable<typeof q>["rx"]): QueueInfo => ({
    size: dq.layout.size,
    pending: dq.pending(),
    ...dq.stats,
    broken: dq.broken,
  });
  return {
    state: t.state,
    reason: t.reason,
    region: { path: sidecar.regionPath, size: r.size },
    guestCid: t.guestCid,
    status: {
      value: status,
      bits: STATUS_NAMES.filter(([, v]) => status & v).map(([k]) => k),
    },
    features: {
      offered: featureBits(t.offered).map(featureName),
      negotiated: q === null ? [] : featureBits(q.features).map(featureName),
    },
    notification: sidecar.doorbell === null ? "poll" : "doorbell",
    generations: {
      device: t.generation,
      driver: r.load32(H.DRIVER_GENERATION),
    },
    queues: q === null
      ? null
      : { rx: queue(q.rx), tx: queue(q.tx), event: queue(q.event) },
    connections: sidecar.engine.connectionCount,
  };
}
