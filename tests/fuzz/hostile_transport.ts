/**
 * Ring- and transport-level hostility: the guest corrupting its own rings
 * (available index jumps and rewinds, heads outside the table, stale heads,
 * scribbled descriptor tables and used rings), writing status words behind
 * its driver's back (resets, FAILED, cleared bits, a new generation), and
 * taking over the negotiation to offer the device malformed or merely odd
 * queue configurations, which the device then runs on garbage rings.
 *
 * The device may answer any of these with NEEDS_RESET; the well-behaved
 * connections may end. What it must not do is throw, touch memory outside
 * the region or outside what it owns, or fail to serve the driver once the
 * driver resets and negotiates again. {@linkcode HostileTransport.forceReset}
 * makes sure that reset happens: some corruptions go unnoticed by both sides
 * (a real guest that corrupts its rings is simply broken), and the run has
 * to carry on.
 *
 * Header words the device owns and the driver reads when it negotiates
 * (MAGIC, VERSION, sizes, features offered, GUEST_CID) are left alone: the
 * device never reads them back, and a guest that scribbles over them only
 * stops its own driver from negotiating again.
 *
 * @module
 */

import { STATUS } from "../../device/virtio.ts";
import {
  H,
  HEADER_SIZE,
  Q,
  QUEUE_RECORD,
  queueRecord,
} from "../../device/transport/layout.ts";
import {
  alignUp,
  AVAIL_IDX,
  AVAIL_RING,
  DESC_SIZE,
  packSplitRing,
  splitRingBytes,
  type SplitRingLayout,
  USED_IDX,
} from "../../device/virtqueue/split_ring.ts";
import { DESC_F, FEATURE, featureBit } from "../../device/virtio.ts";
import {
  CID,
  encodeHeader,
  HDR_LEN,
  newHeader,
  OP,
  TYPE,
} from "../../device/packets/header.ts";
import type { Prng } from "../_support/prng.ts";
import { type FuzzRig, GUEST_CID } from "./fuzz_rig.ts";
import { HOST_PORTS } from "./good_traffic.ts";
import { HOSTILE_PORT_FIRST } from "./hostile_packets.ts";

/** What a takeover left behind. */
export interface Takeover {
  description: string;
  /** The device accepted the actor's configuration and runs it. */
  running: boolean;
}

/** The transport-level actor. */
export class HostileTransport {
  readonly rig: FuzzRig;
  /** Takeover outcomes: "<configuration> -> <device state>". */
  readonly outcomes: Record<string, number> = {};
  #lastFault = "none";
  /** The actor's own queue layouts while the device runs them. */
  #layouts: SplitRingLayout[] | null = null;

  constructor(rig: FuzzRig) {
    this.rig = rig;
  }

  /** Corrupts the live rings of the well-behaved driver. */
  ringTamper(rng: Prng): string {
    const q = this.rig.queues;
    if (q === null) return "ring tamper skipped (no queues)";
    const r = this.rig.region;
    const queue = rng.pick([q.tx, q.tx, q.rx, q.event]);
    const l = queue.layout;
    const published = r.load16(l.avail + AVAIL_IDX);
    switch (rng.int(0, 6)) {
      case 0: {
        const to = (published + l.size + 1 + rng.int(0, 0xffff - l.size - 1)) &
          0xffff;
        r.store16(l.avail + AVAIL_IDX, to);
        return `${queue.name} avail idx jumps ${published} -> ${to}`;
      }
      case 1: {
        const to = (published - rng.int(1, 64)) & 0xffff;
        r.store16(l.avail + AVAIL_IDX, to);
        return `${queue.name} avail idx rewinds ${published} -> ${to}`;
      }
      case 2: {
        const head = l.size + rng.int(0, 0xffff - l.size);
        r.setU16(l.avail + AVAIL_RING + 2 * (published % l.size), head);
        r.store16(l.avail + AVAIL_IDX, (published + 1) & 0xffff);
        return `${queue.name} offers head ${head} of ${l.size}`;
      }
      case 3: {
        const k = rng.int(1, l.size);
        r.store16(l.avail + AVAIL_IDX, (published + k) & 0xffff);
        return `${queue.name} avail idx +${k} over stale ring entries`;
      }
      case 4: {
        const n = rng.int(1, Math.min(8, l.size));
        for (let i = 0; i < n; i++) {
          const d = rng.int(0, l.size - 1);
          r.write(l.desc + d * DESC_SIZE, rng.bytes(DESC_SIZE));
        }
        return `${queue.name} descriptor table scribbled (${n})`;
      }
      case 5: {
        const bytes = splitRingBytes(l.size).used;
        const at = rng.int(0, bytes - 1);
        r.write(l.used + at, rng.bytes(Math.min(bytes - at, rng.int(1, 16))));
        return `${queue.name} used ring scribbled`;
      }
      default: {
        // Duplicate a head that is in flight: the device completes it twice.
        const pos = (published - 1) & 0xffff;
        const head = r.getU16(l.avail + AVAIL_RING + 2 * (pos % l.size));
        r.setU16(l.avail + AVAIL_RING + 2 * (published % l.size), head);
        r.store16(l.avail + AVAIL_IDX, (published + 1) & 0xffff);
        return `${queue.name} offers head ${head} twice`;
      }
    }
  }

  /**
   * Writes a status behind the driver's back, the way a second, confused
   * driver would; the device's loop answers it.
   */
  statusTamper(rng: Prng): string {
    const r = this.rig.region;
    switch (rng.int(0, 5)) {
      case 0:
        this.#post(0);
        return "reset mid-stream";
      case 1:
        this.#post(STATUS.FAILED | rng.int(0, 15));
        return "FAILED mid-stream";
      case 2: {
        const s = rng.pick([1, 3, 11, 7, 5, 0x40, 0x4f, rng.u32()]);
        this.#post(s);
        return `status 0x${s.toString(16)} mid-stream`;
      }
      case 3:
        r.add32(H.DRIVER_GENERATION, 1);
        return "new driver generation mid-stream";
      case 4: {
        const s = rng.u32();
        r.store32(H.DEVICE_STATUS, s);
        return `device status scribbled to 0x${s.toString(16)}`;
      }
      default:
        r.store32(H.DEVICE_GENERATION, rng.u32());
        return "device generation scribbled";
    }
  }

  /**
   * Scribbles header words the device must not act on while running:
   * the features, the pool and the queue records (read only at DRIVER_OK),
   * a repeated status write, the heartbeat and peer words, the reserved
   * area, and device-owned words the running driver ignores.
   */
  headerNoise(rng: Prng): string {
    const r = this.rig.region;
    switch (rng.int(0, 7)) {
      case 0:
        r.setU64(
          H.DRIVER_FEATURES,
          BigInt(rng.u32()) << BigInt(rng.int(0, 32)),
        );
        return "driver features scribbled";
      case 1:
        r.store32(H.POOL_OFFSET, rng.u32());
        r.store32(H.POOL_SIZE, rng.u32());
        return "pool words scribbled";
      case 2: {
        const at = queueRecord(rng.int(0, 2));
        r.write(at, rng.bytes(QUEUE_RECORD));
        return "queue record scribbled";
      }
      case 3:
        // The same status again: the device answers it and changes nothing.
        r.add32(H.STATUS_SEQ, 1);
        return "status write repeated";
      case 4:
        r.store32(H.DRIVER_HEARTBEAT, rng.u32());
        r.store32(H.DRIVER_PEER, rng.u32());
        return "heartbeat and peer scribbled";
      case 5: {
        const at = 448 + rng.int(0, HEADER_SIZE - 448 - 64);
        r.write(at, rng.bytes(rng.int(1, 64)));
        return "reserved header bytes scribbled";
      }
      case 6:
        r.store32(H.STATUS_ACK, rng.u32());
        r.store32(H.DEVICE_HEARTBEAT, rng.u32());
        return "device ack and heartbeat scribbled";
      default:
        r.write(H.REASON, rng.bytes(256));
        return "reason scribbled";
    }
  }

  /**
   * Takes the negotiation over: a status sequence (mostly the proper one,
   * sometimes random), features, and a queue configuration that is valid,
   * odd, or broken in one targeted way. The device answers each write at
   * once, as its loop would if it looked right then.
   */
  takeover(rng: Prng): Takeover {
    this.#layouts = null;
    this.#lastFault = "none";
    const steps: string[] = [];
    const proper = rng.chance(0.8);
    if (proper) {
      this.#write(0);
      this.#write(STATUS.ACKNOWLEDGE);
      this.#write(STATUS.ACKNOWLEDGE | STATUS.DRIVER);
      steps.push(this.#features(rng));
      this.#write(STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FEATURES_OK);
      steps.push(this.#config(rng));
      this.#write(
        STATUS.ACKNOWLEDGE | STATUS.DRIVER | STATUS.FEATURES_OK |
          STATUS.DRIVER_OK,
      );
    } else {
      for (let i = rng.int(2, 8); i > 0; i--) {
        if (rng.chance(0.3)) steps.push(this.#features(rng));
        if (rng.chance(0.3)) steps.push(this.#config(rng));
        const s = rng.pick([0, 1, 3, 11, 15, 4, 8, 12, 128, 0x4f, rng.u32()]);
        this.#write(s);
        steps.push(`status 0x${s.toString(16)}`);
      }
    }
    const running = this.rig.device.state === "running";
    if (running) this.#layouts = this.#readLayouts();
    const key = `${
      proper ? this.#lastFault : "random order"
    } -> ${this.rig.device.state}`;
    this.outcomes[key] = (this.outcomes[key] ?? 0) + 1;
    return {
      description: `takeover (${proper ? "proper" : "random"} order; ${
        steps.join("; ")
      }) -> device ${this.rig.device.state}${
        this.rig.device.state === "needs-reset"
          ? `: ${this.rig.device.reason}`
          : ""
      }`,
      running,
    };
  }

  /**
   * While the device runs the actor's configuration: fills its rings with
   * garbage (random heads, descriptors, indirect tables, and headers that
   * open connections, so the device writes into the actor's rx ring too).
   */
  garbage(rng: Prng): void {
    const layouts = this.#layouts;
    const queues = this.rig.device.queues;
    if (layouts === null || queues === null) return;
    this.#fill(
      rng,
      layouts,
      [queues.rx.lastAvail, queues.tx.lastAvail, queues.event.lastAvail],
      this.rig.devicePort.poolOf(queues),
    );
  }

  /**
   * Writes garbage into three rings: descriptors (mostly in the pool, some
   * indirect), plausible headers behind the tx ones, ring entries and an
   * available index from `starts` on.
   */
  #fill(
    rng: Prng,
    layouts: SplitRingLayout[],
    starts: number[],
    pool: { start: number; end: number },
  ): void {
    const r = this.rig.region;
    const inPool = (len: number) =>
      pool.end - pool.start > len
        ? pool.start + rng.int(0, pool.end - pool.start - len)
        : pool.start;
    for (const [i, l] of layouts.entries()) {
      const writable = i !== 1;
      for (let d = 0; d < l.size && d < 64; d++) {
        const len = rng.pick([0, 1, 44, 46, 64, 4096, rng.int(0, 70000)]);
        const addr = rng.chance(0.85) ? inPool(len) : rng.u32();
        let flags = rng.chance(0.85)
          ? (writable ? DESC_F.WRITE : 0)
          : rng.int(0, 7);
        if (rng.chance(0.3)) flags |= DESC_F.NEXT;
        const at = l.desc + d * DESC_SIZE;
        if (rng.chance(0.05)) {
          // An indirect table in the pool, itself full of descriptors.
          const n = rng.int(1, 8);
          const table = inPool(16 * n);
          for (let k = 0; k < n; k++) {
            const t = table + 16 * k;
            const klen = rng.int(0, 4096);
            r.setOffset64(t, inPool(klen));
            r.setU32(t + 8, klen);
            r.setU16(
              t + 12,
              (writable ? DESC_F.WRITE : 0) |
                (k < n - 1 ? DESC_F.NEXT : 0) |
                (rng.chance(0.05) ? DESC_F.INDIRECT : 0),
            );
            r.setU16(t + 14, rng.chance(0.9) ? k + 1 : rng.int(0, 0xffff));
          }
          r.setOffset64(at, table);
          r.setU32(at + 8, rng.chance(0.9) ? 16 * n : rng.int(0, 200));
          r.setU16(
            at + 12,
            DESC_F.INDIRECT | (rng.chance(0.1) ? DESC_F.NEXT : 0),
          );
        } else {
          r.setOffset64(at, addr);
          r.setU32(at + 8, len);
          r.setU16(at + 12, flags);
        }
        r.setU16(
          at + 14,
          rng.chance(0.9) ? rng.int(0, l.size - 1) : rng.u32() & 0xffff,
        );
        // (Never below HEADER_SIZE: the header's device words are left alone.)
        if (
          !writable && len >= HDR_LEN && addr >= HEADER_SIZE &&
          addr + HDR_LEN <= r.size
        ) {
          this.#plausibleHeader(rng, addr);
        }
      }
      const from = starts[i]!;
      const k = rng.chance(0.9) ? rng.int(0, l.size) : rng.int(0, 0xffff);
      for (let p = 0; p < Math.min(k, l.size); p++) {
        r.setU16(
          l.avail + AVAIL_RING + 2 * ((from + p) % l.size),
          rng.chance(0.97) ? rng.int(0, l.size - 1) : rng.int(0, 0xffff),
        );
      }
      r.store16(l.avail + AVAIL_IDX, (from + k) & 0xffff);
    }
  }

  /**
   * Makes sure the device ends up in NEEDS_RESET, so the well-behaved
   * driver notices and negotiates again. Does nothing while that driver is
   * already negotiating (it resets the device itself) or the device already
   * asks for a reset.
   */
  forceReset(): boolean {
    if (this.rig.driver.queues === null) return false;
    const state = this.rig.device.state;
    if (state === "needs-reset") return false;
    if (state === "failed") this.#write(0);
    // DRIVER_OK alone: either it clears bits the device had accepted, or
    // it comes before FEATURES_OK; NEEDS_RESET both ways.
    this.#write(STATUS.DRIVER_OK);
    return true;
  }

  /** A status write the device's own loop will answer. */
  #post(status: number): void {
    const r = this.rig.region;
    r.store32(H.DRIVER_STATUS, status);
    r.add32(H.STATUS_SEQ, 1);
  }

  /** A status write the device answers at once. */
  #write(status: number): void {
    this.#post(status);
    this.rig.answerNow();
  }

  #features(rng: Prng): string {
    const r = this.rig.region;
    const offered = r.getU64(H.DEVICE_FEATURES);
    let f = 0n;
    for (let b = 0; b < 64; b++) {
      if ((offered & (1n << BigInt(b))) !== 0n && rng.chance(0.6)) {
        f |= 1n << BigInt(b);
      }
    }
    if (rng.chance(0.85)) f |= featureBit(FEATURE.VERSION_1);
    if (rng.chance(0.1)) f |= 1n << BigInt(rng.pick([2, 33, 34, 35, 63]));
    r.setU64(H.DRIVER_FEATURES, f);
    return `features 0x${f.toString(16)}`;
  }

  /**
   * Writes the pool and queue records: valid, or broken in one way. A valid
   * one's rings get garbage before DRIVER_OK half the time, so that the
   * device's first look (and a TRANSPORT_RESET it owes) meets it.
   */
  #config(rng: Prng): string {
    const r = this.rig.region;
    const max = r.getU32(H.MAX_QUEUE_SIZE);
    const sizes = [0, 1, 2].map(() =>
      Math.min(max, rng.pick([1, 2, 4, 8, 16, 64, 256, 1024]))
    );
    // Rings packed from somewhere past the header, with random gaps.
    let at = HEADER_SIZE + rng.int(0, 64) * 16;
    const layouts = sizes.map((size) => {
      const p = packSplitRing(at, size);
      at = p.end + rng.int(0, 4) * 16;
      return { ...p.layout };
    });
    let poolStart = alignUp(at, 64) + rng.int(0, 1024);
    let poolSize = Math.max(64, rng.int(64 << 10, r.size - poolStart));
    const records = layouts.map((l) => ({
      size: l.size,
      enable: 1,
      desc: l.desc as number | bigint,
      avail: l.avail as number | bigint,
      used: l.used as number | bigint,
    }));
    const victim = records[rng.int(0, 2)]!;
    const part = rng.pick(["desc", "avail", "used"] as const);
    const faults = [
      "pool size 0",
      "pool below the header",
      "pool past the region",
      "pool offset plus size overflows",
      "queue not enabled",
      "queue size above the limit",
      "queue size not a power of two",
      "queue size 0",
      "part outside the region",
      "part above 2^32",
      "part misaligned",
      "parts overlap",
      "part overlaps the header",
      "part overlaps the pool",
      "part overlaps another queue",
    ] as const;
    // A third valid, so the device often runs on the actor's rings.
    const fault = rng.chance(0.35) ? "valid" : rng.pick(faults);
    this.#lastFault = fault;
    switch (fault) {
      case "pool size 0":
        poolSize = 0;
        break;
      case "pool below the header":
        poolStart = rng.int(0, HEADER_SIZE - 1);
        break;
      case "pool past the region":
        poolSize = r.size - poolStart + rng.int(1, 1 << 20);
        break;
      case "pool offset plus size overflows":
        poolStart = 0xffffff00 + rng.int(0, 0xff);
        poolSize = 0x200 + rng.int(0, 0xffff);
        break;
      case "queue not enabled":
        victim.enable = rng.pick([0, 2, 0xffff]);
        break;
      case "queue size above the limit":
        victim.size = rng.pick([max * 2, 32768, 0xffff]) & 0xffff;
        break;
      case "queue size not a power of two":
        victim.size = rng.pick([3, 5, 100, 1000, 1023]);
        break;
      case "queue size 0":
        victim.size = 0;
        break;
      case "part outside the region":
        victim[part] = r.size - rng.int(0, 8) * 2;
        break;
      case "part above 2^32":
        victim[part] = (BigInt(rng.int(1, 0xffffffff)) << 32n) |
          BigInt(Number(victim[part]));
        break;
      case "part misaligned":
        victim[part] = Number(victim[part]) + 1;
        break;
      case "parts overlap":
        victim.avail = victim.desc;
        break;
      case "part overlaps the header":
        victim[part] = rng.int(0, HEADER_SIZE / 16 - 1) * 16;
        break;
      case "part overlaps the pool":
        victim[part] = alignUp(poolStart, 16) + 16;
        break;
      case "part overlaps another queue": {
        const other = records.find((x) => x !== victim)!;
        victim[part] = other.desc;
        break;
      }
      case "valid":
        break;
    }
    r.store32(H.POOL_OFFSET, poolStart >>> 0);
    r.store32(H.POOL_SIZE, poolSize >>> 0);
    const starts = [0, 0, 0];
    records.forEach((rec, i) => {
      const at = queueRecord(i);
      r.setU16(at + Q.SIZE, rec.size);
      r.setU32(at + Q.VECTOR, rng.chance(0.9) ? 1 : rng.u32());
      r.setU64(at + Q.DESC, BigInt(rec.desc));
      r.setU64(at + Q.DRIVER, BigInt(rec.avail));
      r.setU64(at + Q.DEVICE, BigInt(rec.used));
      r.setU16(at + Q.ENABLE, rec.enable);
      // Rings as a fresh queue has them, or with leftovers in the used index.
      const used = Number(rec.used);
      if (
        rec.size >= 1 && rec.size <= 32768 && used % 4 === 0 &&
        used >= HEADER_SIZE && used + splitRingBytes(rec.size).used <= r.size
      ) {
        starts[i] = rng.chance(0.8) ? 0 : rng.u32() & 0xffff;
        r.store16(used + USED_IDX, starts[i]!);
      }
    });
    if (fault === "valid" && rng.chance(0.5)) {
      this.#fill(rng, layouts, starts, {
        start: poolStart,
        end: poolStart + poolSize,
      });
    }
    return `config ${fault} (sizes ${records.map((x) => x.size).join("/")})`;
  }

  #readLayouts(): SplitRingLayout[] | null {
    const q = this.rig.device.queues;
    return q === null ? null : [q.rx.layout, q.tx.layout, q.event.layout];
  }

  /** A header that asks for something, so the host answers. */
  #plausibleHeader(rng: Prng, addr: number): void {
    const h = newHeader();
    h.srcCid = GUEST_CID;
    h.dstCid = CID.HOST;
    h.srcPort = HOSTILE_PORT_FIRST + rng.int(0, 4095);
    h.dstPort = rng.chance(0.7) ? rng.pick(HOST_PORTS) : rng.int(0, 100);
    h.type = rng.chance(0.8) ? TYPE.STREAM : TYPE.SEQPACKET;
    h.op = rng.pick([OP.REQUEST, OP.REQUEST, OP.RW, OP.CREDIT_REQUEST]);
    h.bufAlloc = 262144;
    h.len = rng.chance(0.7) ? 0 : rng.int(0, 100);
    const bytes = new Uint8Array(HDR_LEN);
    encodeHeader(new DataView(bytes.buffer), 0, h);
    this.rig.region.write(addr, bytes);
  }
}
