/**
 * `/metrics` in the Prometheus text exposition format (version 0.0.4):
 * per-route connections and bytes by direction, packets by op, refusals and
 * resets by reason, queue depths and device state, all prefixed `ivsock_`.
 *
 * @module
 */

import type { Sidecar } from "../proxy/sidecar.ts";
import { deviceInfo } from "./device_info.ts";

interface Sample {
  labels: Record<string, string>;
  value: number;
}

/** Renders every metric of `sidecar`. */
export function renderMetrics(sidecar: Sidecar): string {
  const out: string[] = [];
  const metric = (
    name: string,
    type: "counter" | "gauge",
    help: string,
    samples: Sample[],
  ) => {
    out.push(`# HELP ivsock_${name} ${help}`, `# TYPE ivsock_${name} ${type}`);
    for (const s of samples) {
      out.push(`ivsock_${name}${labels(s.labels)} ${s.value}`);
    }
  };
  const routes = sidecar.routes.list();
  metric(
    "route_connections",
    "gauge",
    "Open connections per route.",
    routes.map((r) => ({
      labels: { route: r.name },
      value: r.connections.size,
    })),
  );
  metric(
    "route_connections_total",
    "counter",
    "Connections accepted per route.",
    routes.map((r) => ({
      labels: { route: r.name },
      value: r.stats.accepted,
    })),
  );
  metric(
    "route_bytes_total",
    "counter",
    "Payload bytes per route and direction.",
    routes.flatMap((r) => {
      const b = r.bytes();
      return [
        { labels: { route: r.name, direction: "to_guest" }, value: b.toGuest },
        {
          labels: { route: r.name, direction: "from_guest" },
          value: b.fromGuest,
        },
      ];
    }),
  );
  metric(
    "route_rejected_total",
    "counter",
    "Connections a route refused, by reason.",
    routes.flatMap((r) =>
      Object.entries(r.stats.rejected).map(([reason, value]) => ({
        labels: { route: r.name, reason },
        value,
      }))
    ),
  );
  metric(
    "route_closed_total",
    "counter",
    "Connections that ended, by outcome (closed, reset-by-guest, reset-by-peer, idle-timeout, ...).",
    routes.flatMap((r) =>
      Object.entries(r.stats.closed).map(([outcome, value]) => ({
        labels: { route: r.name, outcome },
        value,
      }))
    ),
  );
  const s = sidecar.engine.stats;
  metric("packets_total", "counter", "vsock packets by direction and op.", [
    ...Object.entries(s.packetsIn).map(([op, value]) => ({
      labels: { direction: "from_guest", op },
      value,
    })),
    ...Object.entries(s.packetsOut).map(([op, value]) => ({
      labels: { direction: "to_guest", op },
      value,
    })),
  ]);
  metric(
    "refused_total",
    "counter",
    "Guest packets answered with RST because no connection or listener wanted them, by reason.",
    Object.entries(s.refused).map(([reason, value]) => ({
      labels: { reason },
      value,
    })),
  );
  metric(
    "dropped_total",
    "counter",
    "Guest packets dropped without a reply, by reason.",
    Object.entries(s.dropped).map(([reason, value]) => ({
      labels: { reason },
      value,
    })),
  );
  metric(
    "vsock_closed_total",
    "counter",
    "vsock connections that ended, by how (closed, ECONNRESET, EPROTO, ENETRESET, ...).",
    Object.entries(s.closed).map(([reason, value]) => ({
      labels: { reason },
      value,
    })),
  );
  metric("vsock_connections", "gauge", "Open vsock connections.", [{
    labels: {},
    value: sidecar.engine.connectionCount,
  }]);
  metric(
    "pending_replies",
    "gauge",
    "RSTs waiting for room in the guest's receive queue.",
    [{
      labels: {},
      value: sidecar.engine.pendingReplies,
    }],
  );

  const d = deviceInfo(sidecar);
  metric("device_up", "gauge", "1 while a guest driver is running.", [{
    labels: {},
    value: d.state === "running" ? 1 : 0,
  }]);
  metric(
    "device_status",
    "gauge",
    "The device status bits the device has accepted.",
    [{ labels: {}, value: d.status.value }],
  );
  metric(
    "device_generation",
    "gauge",
    "Times a device process attached to the region.",
    [{ labels: {}, value: d.generations.device }],
  );
  metric(
    "driver_generation",
    "gauge",
    "Times a guest driver started on the region.",
    [{ labels: {}, value: d.generations.driver }],
  );
  const queues = d.queues === null ? [] : Object.entries(d.queues);
  metric(
    "queue_pending",
    "gauge",
    "Buffers the guest made available that the device has not taken yet.",
    queues.map(([queue, q]) => ({
      labels: { queue },
      value: q.pending,
    })),
  );
  metric(
    "queue_dropped_total",
    "counter",
    "Malformed descriptor chains dropped per queue.",
    queues.map(([queue, q]) => ({
      labels: { queue },
      value: q.dropped,
    })),
  );
  metric(
    "queue_used_total",
    "counter",
    "Buffers returned to the guest per queue.",
    queues.map(([queue, q]) => ({
      labels: { queue },
      value: q.used,
    })),
  );
  return out.join("\n") + "\n";
}

function labels(l: Record<string, string>): string {
  const entries = Object.entries(l);
  if (entries.length === 0) return "";
  return `{${entries.map(([k, v]) => `${k}="${escapeLabel(v)}"`).join(",")}}`;
}

/** Label values escape backslash, double quote and newline. */
export function escapeLabel(v: string): string {
  return v.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
}
