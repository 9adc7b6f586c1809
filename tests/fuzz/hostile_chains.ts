/**
 * Chain-level hostility the device must survive without resetting: chains
 * on the tx queue whose descriptors break a rule (addresses outside the
 * region, in the header or the rings, above 2^32 or wrapping; huge lengths;
 * WRITE on tx; INDIRECT not negotiated; next out of range; loops; chains
 * shorter than a header), and receive buffers whose descriptors the guest
 * spoils after posting them (outside the pool, read-only, INDIRECT, bad
 * next, loops, too short).
 *
 * Each such chain must be returned unused (length 0) and the queue must
 * keep working, so none of it may end a well-behaved connection. The actor
 * points its chains only at memory it owns: the payload space of a packet
 * it sent itself (the "owner"), which it places last in the available ring
 * so that the driver cannot reclaim that space before the device has read
 * every chain pointing into it.
 *
 * The actor never makes a chain that is valid but different from what the
 * driver posted (say, a receive buffer linked to another one): that would
 * be the guest corrupting its own data, a transport-level matter.
 *
 * @module
 */

import type { Region } from "../../device/shm/region.ts";
import type { DriverQueues } from "../../device/transport/driver_transport.ts";
import type { DeviceQueue } from "../../device/virtqueue/device_queue.ts";
import {
  CID,
  encodeHeader,
  HDR_LEN,
  newHeader,
  OP,
  TYPE,
} from "../../device/packets/header.ts";
import { HEADER_SIZE } from "../../device/transport/layout.ts";
import {
  AVAIL_IDX,
  AVAIL_RING,
  DESC_ADDR,
  DESC_FLAGS,
  DESC_LEN,
  DESC_NEXT,
  DESC_SIZE,
} from "../../device/virtqueue/split_ring.ts";
import { DESC_F } from "../../device/virtio.ts";
import type { Prng } from "../_support/prng.ts";
import { taken } from "./drop_ledger.ts";
import { GUEST_CID } from "./fuzz_rig.ts";
import { HOSTILE_PORT_FIRST } from "./hostile_packets.ts";
import type { HostileTx } from "./hostile_tx.ts";

/** Bytes of owner payload the actor builds its chains in. */
const SCRATCH = 2048;

/** The ways a tx chain is spoiled; each must be dropped by the device. */
const TX_SPOILS = [
  "address at or above 2^32",
  "address in the header",
  "address in the rings",
  "ends past the region",
  "address plus length wraps 32 bits",
  "length 0xffffffff",
  "WRITE on a tx descriptor",
  "INDIRECT not negotiated",
  "next outside the table",
  "next loops to itself",
  "next loops to the head",
  "shorter than a header",
] as const;

/** Counters. */
export interface ChainStats {
  txSpoiled: number;
  txValidOdd: number;
  rxSpoiled: number;
  byKind: Record<string, number>;
}

/** The chain-level actor. */
export class HostileChains {
  readonly stats: ChainStats = {
    txSpoiled: 0,
    txValidOdd: 0,
    rxSpoiled: 0,
    byKind: {},
  };
  /**
   * Receive positions spoiled and not taken yet, on the queue object they
   * were spoiled on. Each is spoiled once: spoils stack on the descriptor,
   * and a later one can undo what the ledger was told of an earlier one (a
   * buffer made 5 bytes long, then moved to 8 bytes before the region's
   * end, fits there and is dropped only as too short, uncounted).
   */
  #rxPending = new Set<number>();
  #rxQueue: DeviceQueue | null = null;

  /**
   * Adds one to four chains to the tx queue, most of them spoiled, with an
   * owner packet last. Returns the ring positions of the chains the device
   * must drop as chains (each must add one to its `stats.dropped`), or
   * `null` when there was no room. The caller publishes.
   */
  spoilTx(rng: Prng, tx: HostileTx, regionSize: number): number[] | null {
    const q = tx.queues;
    const chains = rng.int(1, 4);
    if (q.tx.freeCount < chains * 3 + 2) return null;
    // The owner: a packet to the actor's own port space that the host
    // answers with an RST, carrying the scratch space as its payload.
    const h = newHeader();
    h.srcCid = GUEST_CID;
    h.dstCid = CID.HOST;
    h.srcPort = HOSTILE_PORT_FIRST + rng.int(0, 4095);
    h.dstPort = 1 + rng.int(0, 999);
    h.type = TYPE.STREAM;
    h.op = OP.RW;
    const owner = tx.send(h, new Uint8Array(SCRATCH));
    if (owner === null) return null;
    const scratch = owner.addr + HDR_LEN;
    const drops: number[] = [];
    for (let c = 0; c < chains; c++) {
      const n = rng.int(1, 3);
      // Descriptors over consecutive pieces of scratch; piece 0 holds a
      // plausible header (an RST to nowhere, so a valid chain is harmless).
      const piece = Math.floor(SCRATCH / n);
      const offsets: number[] = [];
      const lengths: number[] = [];
      for (let i = 0; i < n; i++) {
        offsets.push(scratch + i * piece);
        lengths.push(piece);
      }
      const hdr = newHeader();
      hdr.srcCid = GUEST_CID;
      hdr.dstCid = CID.HOST;
      hdr.srcPort = HOSTILE_PORT_FIRST + rng.int(0, 4095);
      hdr.dstPort = 1 + rng.int(0, 999);
      hdr.type = TYPE.STREAM;
      hdr.op = OP.RST;
      const bytes = new Uint8Array(HDR_LEN);
      encodeHeader(new DataView(bytes.buffer), 0, hdr);
      tx.region.write(scratch, bytes);
      const position = tx.nextPosition;
      const head = tx.addChain(offsets, lengths);
      if (head < 0) break;
      const indices = tx.chainIndices(head, n);
      if (rng.chance(0.85)) {
        const kind = rng.pick(TX_SPOILS);
        this.#spoil(rng, tx.region, q, indices, kind, regionSize);
        this.stats.txSpoiled++;
        this.stats.byKind[kind] = (this.stats.byKind[kind] ?? 0) + 1;
        // A chain shorter than a header is valid as a chain: DeviceTx drops
        // it as a packet, which the queue does not count.
        if (kind !== "shorter than a header") drops.push(position);
      } else {
        // Valid but odd: zero-length descriptors in the middle, a header
        // split across descriptors. The device must accept it.
        if (n > 1 && rng.chance(0.5)) tx.setDescLength(indices[1]!, 0);
        else if (n > 1) tx.setDescLength(indices[0]!, rng.int(1, HDR_LEN - 1));
        this.stats.txValidOdd++;
      }
    }
    // The owner goes last, so its space outlives every chain pointing in.
    const last = (tx.nextPosition - 1) & 0xffff;
    tx.swapPositions(owner.position, last);
    return drops.map((p) => (p === last ? owner.position : p));
  }

  #spoil(
    rng: Prng,
    region: Region,
    q: DriverQueues,
    indices: number[],
    kind: (typeof TX_SPOILS)[number],
    regionSize: number,
  ): void {
    const table = q.tx.layout.desc;
    const at = (i: number) => table + i * DESC_SIZE;
    const d = rng.pick(indices);
    switch (kind) {
      case "address at or above 2^32":
        region.setU32(at(d) + DESC_ADDR + 4, rng.int(1, 0xffffffff));
        return;
      case "address in the header":
        region.setOffset64(at(d) + DESC_ADDR, rng.int(0, HEADER_SIZE - 64));
        region.setU32(at(d) + DESC_LEN, rng.int(1, 64));
        return;
      case "address in the rings":
        region.setOffset64(at(d) + DESC_ADDR, table + rng.int(0, 32));
        region.setU32(at(d) + DESC_LEN, rng.int(1, 64));
        return;
      case "ends past the region":
        region.setOffset64(at(d) + DESC_ADDR, regionSize - rng.int(0, 64));
        region.setU32(at(d) + DESC_LEN, rng.int(65, 100_000));
        return;
      case "address plus length wraps 32 bits":
        region.setOffset64(at(d) + DESC_ADDR, 0xffffffff - rng.int(0, 4096));
        region.setU32(at(d) + DESC_LEN, rng.int(4097, 0x10000));
        return;
      case "length 0xffffffff":
        region.setU32(at(d) + DESC_LEN, 0xffffffff);
        return;
      case "WRITE on a tx descriptor":
        region.setU16(
          at(d) + DESC_FLAGS,
          region.getU16(at(d) + DESC_FLAGS) | DESC_F.WRITE,
        );
        return;
      case "INDIRECT not negotiated":
        region.setU16(
          at(d) + DESC_FLAGS,
          (region.getU16(at(d) + DESC_FLAGS) & ~DESC_F.NEXT) | DESC_F.INDIRECT,
        );
        region.setU32(at(d) + DESC_LEN, 16 * rng.int(1, 4));
        return;
      case "next outside the table": {
        const last = indices[indices.length - 1]!;
        region.setU16(at(last) + DESC_FLAGS, DESC_F.NEXT);
        region.setU16(
          at(last) + DESC_NEXT,
          q.tx.layout.size + rng.int(0, 0xffff - q.tx.layout.size),
        );
        return;
      }
      case "next loops to itself":
        region.setU16(at(d) + DESC_FLAGS, DESC_F.NEXT);
        region.setU16(at(d) + DESC_NEXT, d);
        return;
      case "next loops to the head": {
        const last = indices[indices.length - 1]!;
        region.setU16(at(last) + DESC_FLAGS, DESC_F.NEXT);
        region.setU16(at(last) + DESC_NEXT, indices[0]!);
        return;
      }
      case "shorter than a header": {
        // Every descriptor shrunk: the whole chain holds under 44 bytes.
        let left = rng.int(0, HDR_LEN - 1);
        for (const i of indices) {
          const len = Math.min(left, rng.int(0, left));
          region.setU32(at(i) + DESC_LEN, i === indices.at(-1) ? left : len);
          left -= i === indices.at(-1) ? left : len;
        }
        return;
      }
    }
  }

  /**
   * Spoils receive buffers the driver posted and the device has not taken
   * yet (it never re-reads a chain it holds). Returns the ring positions of
   * those the device must drop as chains when it takes them (a buffer only
   * made too short is dropped by DeviceRx instead, uncounted by the queue).
   */
  spoilRx(
    rng: Prng,
    region: Region,
    q: DriverQueues,
    device: DeviceQueue,
  ): number[] {
    const layout = q.rx.layout;
    const published = region.load16(layout.avail + AVAIL_IDX);
    const waiting = (published - device.lastAvail) & 0xffff;
    if (waiting === 0 || waiting > layout.size) return [];
    const n = rng.int(1, Math.min(4, waiting));
    this.#forgetTaken(device);
    const spoiled = new Set<number>();
    const chainDrops: number[] = [];
    for (let k = 0; k < n; k++) {
      const position = (device.lastAvail + rng.int(0, waiting - 1)) & 0xffff;
      if (this.#rxPending.has(position)) continue;
      const head = region.getU16(
        layout.avail + AVAIL_RING + 2 * (position % layout.size),
      );
      if (spoiled.has(head)) continue;
      spoiled.add(head);
      this.#rxPending.add(position);
      const at = layout.desc + head * DESC_SIZE;
      const kind = rng.int(0, 6);
      if (kind !== 5) chainDrops.push(position);
      this.stats.byKind[`rx ${RX_SPOILS[kind]}`] =
        (this.stats.byKind[`rx ${RX_SPOILS[kind]}`] ?? 0) + 1;
      switch (kind) {
        case 0: // outside the pool
          region.setOffset64(
            at + DESC_ADDR,
            rng.pick([0, HEADER_SIZE, layout.desc, region.size - 8]),
          );
          break;
        case 1: // read-only in a queue the device writes
          region.setU16(at + DESC_FLAGS, 0);
          break;
        case 2:
          region.setU16(at + DESC_FLAGS, DESC_F.WRITE | DESC_F.INDIRECT);
          break;
        case 3:
          region.setU16(at + DESC_FLAGS, DESC_F.WRITE | DESC_F.NEXT);
          region.setU16(at + DESC_NEXT, layout.size + rng.int(0, 100));
          break;
        case 4:
          region.setU16(at + DESC_FLAGS, DESC_F.WRITE | DESC_F.NEXT);
          region.setU16(at + DESC_NEXT, head);
          break;
        case 5: // shorter than any header
          region.setU32(at + DESC_LEN, rng.int(0, HDR_LEN - 1));
          break;
        default:
          region.setU32(at + DESC_ADDR + 4, 1);
      }
    }
    this.stats.rxSpoiled += spoiled.size;
    return chainDrops;
  }

  /** Drops the pending positions the device has taken (or a new queue's). */
  #forgetTaken(device: DeviceQueue): void {
    if (device !== this.#rxQueue) {
      this.#rxQueue = device;
      this.#rxPending.clear();
      return;
    }
    for (const p of this.#rxPending) {
      if (taken(device.lastAvail, p)) this.#rxPending.delete(p);
    }
  }
}

const RX_SPOILS = [
  "outside the pool",
  "read-only",
  "INDIRECT not negotiated",
  "next outside the table",
  "next loops",
  "shorter than a header",
  "address at or above 2^32",
];
