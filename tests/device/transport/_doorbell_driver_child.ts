/**
 * Test and bench child: a simulated guest in doorbell mode. It attaches to
 * the device's ivshmem server as QEMU would, maps the memory it is given,
 * rings the device's peer through its client and sleeps on its own
 * eventfds. With `shm=` instead of `socket=` it maps the region directly
 * and polls (ivshmem-plain).
 *
 * Modes:
 * - `stream`: sends `n` seeded bytes to the echoing device and checks every
 *   byte back; prints `progress <bytes>` every MiB and `done <ok|MISMATCH>`.
 * - `ping`: `n` round trips, one packet in flight, of seeded sizes from 1 to
 *   16 KiB; prints `ping done n=<n> median=<ms> max=<ms> <ok|MISMATCH>`.
 * - `idle`: negotiates and sends nothing.
 *
 * Also prints `id <client id>`, `activated`, `deactivated <reason>`,
 * `event <id>` and the client's `client <event>` lines. SIGUSR2 prints
 * `stats rings=<n>` (rings the device received); SIGTERM prints it and
 * stops cleanly.
 *
 * Usage: _doorbell_driver_child.ts (socket=<path> | shm=<path>)
 *   mode=<stream|ping|idle> [n=<count>] [timeout=<ms>]
 */

import { IvshmemClient } from "../../../device/notify/ivshmem_client.ts";
import { mapFd, mapFile } from "../../../device/shm/shm_file.ts";
import type { InboundPacket } from "../../../device/packets/inbound_packet.ts";
import type { DriverTx } from "../../../device/packets/driver_tx.ts";
import { newHeader, OP, TYPE } from "../../../device/packets/header.ts";
import {
  type DriverQueues,
  DriverTransport,
} from "../../../device/transport/driver_transport.ts";
import {
  type DriverPort,
  DriverRunner,
} from "../../../device/transport/driver_runner.ts";
import { DriverStream } from "../../_support/echo_ports.ts";
import { Prng } from "../../_support/prng.ts";

/** Largest ping payload: four 4 KiB rx buffers, so mergeable rx is used. */
const MAX_PING_BYTES = 16384;

/** One packet in flight at a time; each echo's round trip is timed. */
class PingPort implements DriverPort {
  readonly rtts: number[] = [];
  mismatches = 0;
  #count: number;
  #prng = new Prng(7);
  #header = newHeader();
  #guestCid = 0;
  #payload: Uint8Array | null = null;
  #sentAt = 0;

  constructor(count: number) {
    this.#count = count;
  }

  activated(q: DriverQueues): void {
    this.#guestCid = q.guestCid;
    // A ping lost with the old queues is sent again.
    this.#payload = null;
    console.log("activated");
  }

  deactivated(reason: string): void {
    console.log(`deactivated ${reason}`);
  }

  event(id: number): void {
    console.log(`event ${id}`);
  }

  receive(packet: InboundPacket): void {
    if (packet.header.op !== OP.RW || this.#payload === null) return;
    const rtt = performance.now() - this.#sentAt;
    const back = packet.payloadCopy();
    const sent = this.#payload;
    if (back.length !== sent.length || !back.every((b, i) => b === sent[i])) {
      this.mismatches++;
    }
    this.#payload = null;
    this.rtts.push(rtt);
    if (this.rtts.length === this.#count) this.#report();
  }

  transmit(tx: DriverTx, maxPayload: number): number {
    if (this.#payload !== null || this.rtts.length >= this.#count) return 0;
    const h = this.#header;
    h.srcCid = this.#guestCid;
    h.dstCid = 2;
    h.srcPort = 1234;
    h.dstPort = 7;
    h.type = TYPE.STREAM;
    h.op = OP.RW;
    const size = this.#prng.int(1, Math.min(MAX_PING_BYTES, maxPayload));
    const payload = this.#prng.bytes(size);
    if (!tx.send(h, payload)) return 0;
    this.#payload = payload;
    this.#sentAt = performance.now();
    return 1;
  }

  #report(): void {
    const sorted = [...this.rtts].sort((a, b) => a - b);
    const median = sorted[sorted.length >> 1]!;
    const max = sorted[sorted.length - 1]!;
    console.log(
      `ping done n=${this.rtts.length} median=${median.toFixed(2)} max=${
        max.toFixed(2)
      } ${this.mismatches === 0 ? "ok" : "MISMATCH"}`,
    );
  }
}

function streamPort(bytes: number): DriverPort {
  const data = new Prng(42).bytes(bytes);
  let reported = 0;
  const stream = new DriverStream(data, 16384, () => {
    while (stream.received - reported >= 1 << 20) {
      reported += 1 << 20;
      console.log(`progress ${reported}`);
    }
    if (stream.done) {
      const ok = data.every((b, i) => b === stream.echoed[i]);
      console.log(`done ${ok ? "ok" : "MISMATCH"}`);
    }
  });
  return {
    activated: (q) => {
      stream.activated(q);
      console.log("activated");
    },
    deactivated: (reason) => {
      stream.deactivated(reason);
      console.log(`deactivated ${reason}`);
    },
    event: (id) => {
      stream.event(id);
      console.log(`event ${id}`);
    },
    receive: stream.receive.bind(stream),
    transmit: stream.transmit.bind(stream),
  };
}

const args = Object.fromEntries(
  Deno.args.map((
    a,
  ) => [a.slice(0, a.indexOf("=")), a.slice(a.indexOf("=") + 1)]),
);
const n = Number(args.n ?? 0);
const client = args.socket === undefined
  ? undefined
  : await IvshmemClient.connect(args.socket, {
    onEvent: (e) =>
      console.log(
        `client ${e.type} ${
          "id" in e ? e.id : "reason" in e ? e.reason : e.message
        }`,
      ),
  });
const mapping = client === undefined
  ? mapFile(args.shm!)
  : mapFd(client.takeShmFd(), `ivshmem memory from ${args.socket}`);
if (client !== undefined) console.log(`id ${client.id}`);

let rings = 0;
// Whom to ring is the device's word (DEVICE_PEER); ivsock's server is 0.
const ringDevice = (v: number) => {
  if (client!.ring(transport.devicePeer, v)) rings++;
};
const transport = new DriverTransport(mapping.region, {
  deviceTimeoutMs: Number(args.timeout ?? 3000),
  ...(client === undefined ? {} : { driverPeer: client.id, ringDevice }),
});
const port = args.mode === "ping"
  ? new PingPort(n)
  : streamPort(args.mode === "stream" ? n : 0);
const runner = new DriverRunner(transport, port, {
  heartbeatMs: 50,
  retryMs: 50,
  ...(client === undefined
    ? {}
    : { ringDevice, doorbells: client.vectors.map((e) => e.fd) }),
});
const done = runner.run();

Deno.addSignalListener("SIGUSR2", () => console.log(`stats rings=${rings}`));
Deno.addSignalListener("SIGTERM", async () => {
  await runner.stop();
  await done;
  mapping.close();
  await client?.close();
  console.log(`stats rings=${rings}`);
  Deno.exit(0);
});
