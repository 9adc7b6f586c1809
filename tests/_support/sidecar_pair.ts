/**
 * A real sidecar and a real guest agent in this process, over one /dev/shm
 * region, for route tests: TCP, WebSocket and vsock traffic through the
 * whole stack, with local test servers on either side.
 *
 * @module
 */

import { parseConfig } from "../../config/load.ts";
import type { RouteInput } from "../../config/schema.ts";
import { mapFile, type MappedFile } from "../../device/shm/shm_file.ts";
import { type Expose, type Forward, GuestAgent } from "../../guest/agent.ts";
import { Sidecar } from "../../proxy/sidecar.ts";
import type { ProxyEvent } from "../../proxy/events.ts";

let counter = 0;

export interface SidecarPair {
  sidecar: Sidecar;
  guest: GuestAgent;
  events: ProxyEvent[];
  /** Stops the guest, then the sidecar; removes the region. */
  stop(): Promise<void>;
}

/** Starts both with `routes`, `exposes` and `forwards`; waits for the transport. */
export async function sidecarPair(
  o: {
    routes?: RouteInput[];
    exposes?: Expose[];
    forwards?: Forward[];
    driverTimeoutMs?: number;
  } = {},
): Promise<SidecarPair> {
  const region = `/dev/shm/ivsock-test-pair-${Deno.pid}-${counter++}`;
  const config = parseConfig({
    device: {
      region,
      size: "4MiB",
      driverTimeoutMs: o.driverTimeoutMs ?? 3000,
    },
    routes: o.routes ?? [],
    admin: false,
    shutdownGraceMs: 200,
  });
  const sidecar = await Sidecar.start(config, () => {});
  const events: ProxyEvent[] = [];
  sidecar.events.subscribe((e) => events.push(e));
  let mapping: MappedFile | null = null;
  let guest: GuestAgent | null = null;
  try {
    mapping = mapFile(region);
    guest = await GuestAgent.start({
      region: mapping.region,
      exposes: o.exposes ?? [],
      forwards: o.forwards ?? [],
    });
    await guest.ready(5000);
    const deadline = Date.now() + 5000;
    while (!sidecar.engine.active) {
      if (Date.now() > deadline) {
        throw new Error("the sidecar never saw the guest");
      }
      await new Promise((r) => setTimeout(r, 5));
    }
  } catch (err) {
    await guest?.stop(0);
    mapping?.close();
    await sidecar.stop(0);
    throw err;
  }
  const g = guest;
  const m = mapping;
  return {
    sidecar,
    guest: g,
    events,
    async stop() {
      await g.stop(200);
      m.close();
      await sidecar.stop(200);
    },
  };
}

/** The port a route actually listens on (routes given port 0). */
export function routePort(pair: SidecarPair, name: string): number {
  return Number(
    pair.sidecar.routes.get(name)!.listening.split(":").pop()!.split("/")[0],
  );
}
