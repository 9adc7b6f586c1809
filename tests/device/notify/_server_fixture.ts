/**
 * An {@linkcode IvshmemServer} on a fresh `/dev/shm` file and socket path,
 * recording its events, and removing both files when disposed.
 *
 * @module
 */

import {
  IvshmemServer,
  type IvshmemServerEvent,
} from "../../../device/notify/ivshmem_server.ts";
import { mapFile, type MappedFile } from "../../../device/shm/shm_file.ts";

/** `/dev/shm/ivsock-test-<name>-<pid>`. */
export function shmPath(name: string): string {
  return `/dev/shm/ivsock-test-${name}-${Deno.pid}`;
}

/** `/tmp/ivsock-test-<name>-<pid>.sock`. */
export function socketPath(name: string): string {
  return `/tmp/ivsock-test-${name}-${Deno.pid}.sock`;
}

/** Whether `path` exists (without following a final symlink). */
export function exists(path: string): boolean {
  try {
    Deno.lstatSync(path);
    return true;
  } catch {
    return false;
  }
}

/** Descriptors open in this process: FFI ones are invisible to the
 * resource sanitizer, so tests count them here. */
export function openFdCount(): number {
  return [...Deno.readDirSync("/proc/self/fd")].length;
}

/** Events in arrival order, and a way to await the next matching one. */
export class EventLog {
  readonly all: IvshmemServerEvent[] = [];
  #seen = 0;
  #waiter: (() => void) | undefined;

  readonly push = (event: IvshmemServerEvent): void => {
    this.all.push(event);
    this.#waiter?.();
  };

  /**
   * The first event after the last one returned that matches `type`
   * (skipping others). Rejects after `timeoutMs`.
   */
  async next(
    type: IvshmemServerEvent["type"],
    timeoutMs = 3000,
  ): Promise<IvshmemServerEvent> {
    const deadline = performance.now() + timeoutMs;
    while (true) {
      while (this.#seen < this.all.length) {
        const e = this.all[this.#seen++]!;
        if (e.type === type) return e;
      }
      const left = deadline - performance.now();
      if (left <= 0) throw new Error(`No ${type} event within ${timeoutMs} ms`);
      const { promise, resolve } = Promise.withResolvers<void>();
      this.#waiter = resolve;
      const timer = setTimeout(resolve, left);
      await promise;
      clearTimeout(timer);
      this.#waiter = undefined;
    }
  }
}

/** A running server with its shm file; dispose to clean everything up. */
export interface ServerFixture extends AsyncDisposable {
  server: IvshmemServer;
  shm: MappedFile;
  path: string;
  events: EventLog;
}

/** Starts a server for test `name`. */
export async function startServer(
  name: string,
  options: { vectors: number; maxClients?: number; size?: number },
): Promise<ServerFixture> {
  const path = socketPath(name);
  const shm = mapFile(shmPath(name), {
    mode: "create",
    size: options.size ?? 65536,
  });
  const events = new EventLog();
  try {
    const server = await IvshmemServer.listen({
      path,
      shmFd: shm.fd,
      vectors: options.vectors,
      ...(options.maxClients === undefined
        ? {}
        : { maxClients: options.maxClients }),
      onEvent: events.push,
    });
    return {
      server,
      shm,
      path,
      events,
      async [Symbol.asyncDispose]() {
        try {
          await server.close();
        } finally {
          shm.close({ remove: true });
        }
      },
    };
  } catch (err) {
    shm.close({ remove: true });
    throw err;
  }
}
