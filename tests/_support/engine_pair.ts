/**
 * A host engine (device role) and a guest engine (driver role) joined by a
 * real transport over an in-memory region, both runners running. For
 * protocol tests that need real packets without processes.
 *
 * @module
 */

import { concatBytes } from "./concat_bytes.ts";
import "./ffi.ts";
import { Region } from "../../device/shm/region.ts";
import { DeviceTransport } from "../../device/transport/device_transport.ts";
import {
  DriverTransport,
  type DriverTransportOptions,
} from "../../device/transport/driver_transport.ts";
import {
  DeviceRunner,
  type DeviceRunnerOptions,
} from "../../device/transport/device_runner.ts";
import {
  DriverRunner,
  type DriverRunnerOptions,
} from "../../device/transport/driver_runner.ts";
import { type EngineOptions, VsockEngine } from "../../device/vsock/engine.ts";
import {
  DeviceEnginePort,
  DriverEnginePort,
} from "../../device/vsock/transport_ports.ts";

export interface EnginePair {
  host: VsockEngine;
  guest: VsockEngine;
  region: Region;
  deviceRunner: DeviceRunner;
  driverRunner: DriverRunner;
  /** Stops both runners (connections are aborted first). */
  stop(): Promise<void>;
}

export const GUEST_CID = 3;

/** Starts both sides and waits until both engines are active. */
export async function enginePair(
  options: {
    host?: EngineOptions;
    guest?: EngineOptions;
    driver?: DriverTransportOptions;
    deviceRunner?: DeviceRunnerOptions;
    driverRunner?: DriverRunnerOptions;
    /** How long each side waits for the other's heartbeat. @default {5000} */
    timeoutMs?: number;
    regionSize?: number;
  } = {},
): Promise<EnginePair> {
  const region = Region.alloc(options.regionSize ?? 4 << 20);
  const host = new VsockEngine(options.host);
  const guest = new VsockEngine(options.guest);
  const device = DeviceTransport.attach(region, {
    guestCid: GUEST_CID,
    driverTimeoutMs: options.timeoutMs ?? 5000,
  });
  const deviceRunner = new DeviceRunner(
    device,
    new DeviceEnginePort(host, GUEST_CID),
    options.deviceRunner,
  );
  host.setKick(() => deviceRunner.kick());
  const driver = new DriverTransport(region, {
    deviceTimeoutMs: options.timeoutMs ?? 5000,
    ...options.driver,
  });
  const driverRunner = new DriverRunner(
    driver,
    new DriverEnginePort(guest),
    options.driverRunner,
  );
  guest.setKick(() => driverRunner.kick());
  const running = Promise.all([deviceRunner.run(), driverRunner.run()]);
  const deadline = Date.now() + 5000;
  while (!(host.active && guest.active)) {
    if (Date.now() > deadline) {
      throw new Error("engine pair did not come up within 5 s");
    }
    await new Promise((r) => setTimeout(r, 5));
  }
  return {
    host,
    guest,
    region,
    deviceRunner,
    driverRunner,
    async stop() {
      host.close();
      guest.close();
      // Let the RSTs and closes drain a moment before the loops stop.
      await new Promise((r) => setTimeout(r, 10));
      await driverRunner.stop();
      await deviceRunner.stop();
      await running;
    },
  };
}

/** Reads a stream to its end and returns all bytes. */
export async function readAll(
  readable: ReadableStream<Uint8Array>,
): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  for await (const chunk of readable) parts.push(chunk);
  return concatBytes(parts);
}

/** Writes `data` in chunks of `chunk` bytes, then closes the writable. */
export async function writeAll(
  writable: WritableStream<Uint8Array>,
  data: Uint8Array,
  chunk = 65536,
): Promise<void> {
  const w = writable.getWriter();
  for (let at = 0; at < data.length; at += chunk) {
    await w.write(data.subarray(at, at + chunk));
  }
  await w.close();
}
