/**
 * The host sidecar: the shared region, the device, the vsock engine, the
 * routes and their listeners, assembled from one validated config, and taken
 * apart again in order.
 *
 * Start-up either completes or leaves nothing behind: a region file this
 * process created is removed, sockets are closed and unlinked, listeners
 * closed.
 *
 * The region file is watched while running: if it is removed (or another
 * file takes its path), the guest already attached keeps working through
 * this process's mapping, but nothing new can map the region, so the sidecar
 * says so once in the log and in {@linkcode Sidecar.regionFile} (which
 * `/readyz` reports), and at stop leaves the path alone.
 *
 * @module
 */

import type { LogFn } from "../device/log.ts";
import { mapFile, type MappedFile } from "../device/shm/shm_file.ts";
import { DeviceTransport } from "../device/transport/device_transport.ts";
import { DeviceRunner } from "../device/transport/device_runner.ts";
import { H, NO_PEER } from "../device/transport/layout.ts";
import { IvshmemServer } from "../device/notify/ivshmem_server.ts";
import { IoPoller } from "../device/notify/io_poller.ts";
import { VsockEngine } from "../device/vsock/engine.ts";
import { DeviceEnginePort } from "../device/vsock/transport_ports.ts";
import type { ConfigSpec } from "../config/schema.ts";
import { DataPlane } from "./data_plane.ts";
import { EventBus } from "./events.ts";
import {
  type FileIdentity,
  identityOfFd,
  type RegionFileState,
  regionFileState,
} from "./region_file.ts";
import { RouteTable } from "./route_table.ts";

/**
 * How often the region file's path is checked: a `stat` a second costs
 * nothing, and an operator reading the log sees the removal within that.
 */
const REGION_CHECK_MS = 1000;

/** Start-up failed; the message says what and why. */
export class SidecarError extends Error {
  override name = "SidecarError";
}

/** A running host sidecar. */
export class Sidecar {
  readonly config: ConfigSpec;
  readonly events = new EventBus();
  readonly engine: VsockEngine;
  readonly routes: RouteTable;
  readonly transport: DeviceTransport;
  readonly doorbell: IvshmemServer | null;
  readonly startedAt = Date.now();
  #mapping: MappedFile;
  #io: IoPoller;
  #runner: DeviceRunner;
  #plane: DataPlane;
  #log: LogFn;
  #running: Promise<void>;
  #stopped: Promise<void> | null = null;
  #started = true;
  #regionIdentity: FileIdentity;
  #regionFile: RegionFileState = "present";
  #regionTimer: ReturnType<typeof setInterval>;

  private constructor(
    config: ConfigSpec,
    log: LogFn,
    parts: {
      mapping: MappedFile;
      transport: DeviceTransport;
      doorbell: IvshmemServer | null;
      engine: VsockEngine;
      plane: DataPlane;
      io: IoPoller;
    },
  ) {
    this.config = config;
    this.#log = log;
    this.#mapping = parts.mapping;
    this.#regionIdentity = identityOfFd(parts.mapping.fd);
    this.transport = parts.transport;
    this.doorbell = parts.doorbell;
    this.engine = parts.engine;
    this.#plane = parts.plane;
    this.#io = parts.io;
    this.routes = new RouteTable({
      engine: this.engine,
      io: this.#io,
      events: this.events,
      log,
    }, this.#plane);
    const server = this.doorbell;
    this.#runner = new DeviceRunner(
      this.transport,
      new DeviceEnginePort(this.engine, config.device.guestCid),
      {
        log,
        io: this.#io,
        ...(server === null ? {} : {
          doorbells: server.deviceVectors.map((e) => e.fd),
          ringDriver: (vector: number) => {
            const peer = this.transport.region.load32(H.DRIVER_PEER);
            if (peer === NO_PEER) return;
            try {
              server.ring(peer, vector);
            } catch {
              // A vector the guest's device does not have: nothing to ring.
            }
          },
        }),
      },
    );
    this.engine.setKick(() => this.#runner.kick());
    this.#running = this.#runner.run();
    this.#regionTimer = setInterval(
      () => this.#checkRegionFile(),
      REGION_CHECK_MS,
    );
  }

  /**
   * Maps the region, attaches the device, starts the doorbell server (if
   * configured) and every route.
   *
   * @throws {SidecarError} naming the part that failed; nothing is left
   * behind.
   */
  static async start(config: ConfigSpec, log: LogFn): Promise<Sidecar> {
    const d = config.device;
    let mapping: MappedFile;
    try {
      mapping = mapFile(d.region, {
        mode: "create",
        size: d.size,
        exclusive: true,
      });
    } catch (err) {
      const hint = (err as { code?: string }).code === "ESIZE"
        ? ` (device.size is ${d.size}: make it match, or let ivsock create the file)`
        : "";
      throw new SidecarError(`device.region: ${message(err)}${hint}`, {
        cause: err,
      });
    }
    let doorbell: IvshmemServer | null = null;
    // Set once the sidecar exists; the server may report a disconnect first.
    const hooks: { onDisconnect?: (reason: string) => void } = {};
    let transport: DeviceTransport;
    const engine = new VsockEngine({ bufAlloc: d.bufAlloc, log });
    const plane = new DataPlane();
    let io: IoPoller;
    try {
      io = new IoPoller();
    } catch (err) {
      mapping.close({ remove: mapping.created });
      throw new SidecarError(message(err), { cause: err });
    }
    try {
      try {
        transport = DeviceTransport.attach(mapping.region, {
          guestCid: d.guestCid,
          maxQueueSize: d.maxQueueSize,
          driverTimeoutMs: d.driverTimeoutMs,
          notifyMode: d.doorbell ? "doorbell" : "poll",
          log,
        });
      } catch (err) {
        throw new SidecarError(`device.region: ${d.region}: ${message(err)}`, {
          cause: err,
        });
      }
      if (d.doorbell) {
        try {
          doorbell = await IvshmemServer.listen({
            path: d.doorbell.socket,
            shmFd: mapping.fd,
            vectors: d.doorbell.vectors,
            onEvent: (e) => {
              if (e.type === "log") {
                log("info", `ivshmem server: ${e.message}`);
                return;
              }
              log(
                "info",
                `ivshmem peer ${e.id} ${
                  e.type === "connect" ? "connected" : "disconnected"
                }`,
              );
              // The guest's QEMU went away: drop its queues at once rather
              // than after the heartbeat timeout.
              if (
                e.type === "disconnect" &&
                e.id === mapping.region.load32(H.DRIVER_PEER)
              ) {
                hooks.onDisconnect?.(
                  `the guest's QEMU (ivshmem peer ${e.id}) disconnected`,
                );
              }
            },
          });
        } catch (err) {
          throw new SidecarError(
            `device.doorbell.socket ${d.doorbell.socket}: ${message(err)}`,
            { cause: err },
          );
        }
      }
    } catch (err) {
      io.close();
      mapping.close({ remove: mapping.created });
      throw err;
    }
    const sidecar = new Sidecar(config, log, {
      mapping,
      transport,
      doorbell,
      engine,
      plane,
      io,
    });
    hooks.onDisconnect = (reason) => sidecar.#runner.lost(reason);
    engine.setObserver((e) => {
      if (e.type === "transport") {
        sidecar.events.emit({
          type: "device",
          state: e.state === "up" ? "running" : "stopped",
          reason: e.reason,
        });
      }
    });
    try {
      for (const spec of config.routes) await sidecar.routes.add(spec);
    } catch (err) {
      sidecar.#started = false; // a start-up that failed never "stopped"
      await sidecar.stop(0);
      throw new SidecarError(message(err), { cause: err });
    }
    log(
      "info",
      `device ready on ${d.region} (${d.size} bytes, guest CID ${d.guestCid}, ${
        d.doorbell ? `doorbell at ${d.doorbell.socket}` : "polling"
      })`,
    );
    return sidecar;
  }

  /** The region file's path. */
  get regionPath(): string {
    return this.#mapping.path;
  }

  /**
   * Whether the region's path still holds the file this sidecar maps:
   * "removed" or "replaced" means no new guest (or QEMU) can attach until
   * the sidecar restarts and creates a new one. Checked every second.
   */
  get regionFile(): RegionFileState {
    return this.#regionFile;
  }

  #checkRegionFile(): RegionFileState {
    let now: RegionFileState;
    try {
      now = regionFileState(this.#mapping.path, this.#regionIdentity);
    } catch {
      return this.#regionFile; // cannot tell (a permission error): no news
    }
    if (now === this.#regionFile) return now;
    this.#regionFile = now;
    if (now !== "present") {
      const reason =
        `region file ${this.#mapping.path} was ${now} while running: the guest already attached keeps working through this process's mapping, but no new guest can attach to it; restart ivsock to create a new region`;
      this.#log("warn", reason);
      this.events.emit({ type: "device", state: `region-${now}`, reason });
    }
    return now;
  }

  /**
   * Stops accepting, lets connections drain for `graceMs`, resets the
   * rest, and removes what this process created (the region file, the
   * doorbell socket). Idempotent.
   */
  stop(graceMs: number): Promise<void> {
    this.#stopped ??= (async () => {
      await this.routes.close(graceMs);
      await this.#plane.close();
      this.engine.close();
      await this.#runner.stop();
      await this.#running;
      this.#io.close();
      await this.doorbell?.close();
      clearInterval(this.#regionTimer);
      // Never unlink a path that now holds someone else's file.
      this.#mapping.close({
        remove: this.#mapping.created && this.#checkRegionFile() === "present",
      });
      if (this.#started) this.#log("info", "stopped");
    })();
    return this.#stopped;
  }
}

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
