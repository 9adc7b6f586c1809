/**
 * Device role, device-to-driver direction: writes packets into the buffers
 * the driver posted on the rx queue.
 *
 * Without VIRTIO_VSOCK_F_MRG_RXBUF every packet takes exactly one buffer,
 * which must hold at least the 44-byte header; the payload is capped by the
 * buffer. With it (the seed), a packet starts with the 46-byte header whose
 * `num_buffers` counts the buffers it spreads over; every buffer but the last
 * is filled to its end, and all of them are returned to the used ring in one
 * publish, so the driver never sees part of a packet. When too few buffers
 * are posted the packet is not written at all: {@linkcode DeviceRx.put}
 * returns false and the caller retries once the driver posts more.
 *
 * Popped chains are held here between calls, so a chain is validated once
 * however long it waits.
 *
 * @module
 */

import type { DeviceQueue } from "../virtqueue/device_queue.ts";
import { ScatterCursor, SegmentList } from "../virtqueue/segments.ts";
import {
  type ByteSource,
  FILL_BYTES,
  FILL_PACKETS,
  fillFrom,
} from "./byte_source.ts";
import {
  encodeHeader,
  HDR_LEN,
  HeaderScratch,
  MAX_PAYLOAD,
  MRG_HDR_LEN,
  NUM_BUFFERS_OFFSET,
  type PacketHeader,
} from "./header.ts";

/** Writes vsock packets into a device-writes queue. */
export class DeviceRx {
  readonly queue: DeviceQueue;
  readonly mergeable: boolean;
  /** Bytes of header at the start of each packet (44, or 46 merged). */
  readonly headerLength: number;
  #onDrop: (reason: string) => void;
  /** Buffers of the held chains, in pop order. */
  #segments = new SegmentList();
  #heads: Uint16Array;
  /** Index into #segments just past each held chain's last segment. */
  #segEnd: Uint32Array;
  #bytes: Uint32Array;
  #held = 0;
  #heldBytes = 0;
  #hdr = new HeaderScratch();
  #cursor = new ScatterCursor();
  #popScratch = new SegmentList();
  /** The payload ranges of the packets one {@linkcode sendFrom} plans. */
  #dest = new SegmentList();
  #planChain = new Uint32Array(FILL_PACKETS);
  #planPayload = new Uint32Array(FILL_PACKETS);
  /** Packets the last {@linkcode sendFrom} wrote. */
  filledPackets = 0;

  constructor(
    queue: DeviceQueue,
    options: { mergeable: boolean; onDrop?: (reason: string) => void },
  ) {
    this.queue = queue;
    this.mergeable = options.mergeable;
    this.headerLength = options.mergeable ? MRG_HDR_LEN : HDR_LEN;
    this.#onDrop = options.onDrop ?? (() => {});
    const q = queue.layout.size;
    this.#heads = new Uint16Array(q);
    this.#segEnd = new Uint32Array(q);
    this.#bytes = new Uint32Array(q);
  }

  /** Number of driver buffers popped and waiting for a packet. */
  get held(): number {
    return this.#held;
  }

  /**
   * The largest payload the next packet should carry with the buffers
   * posted now, at most {@linkcode MAX_PAYLOAD}; -1 when not even a header
   * fits (wait for the driver to post buffers).
   *
   * With mergeable buffers the packet ends where a buffer ends, unless that
   * would halve it: a full 64 KiB payload behind its 46-byte header needs a
   * second 64 KiB buffer for its last 46 bytes, so every packet took two
   * buffers (and a queue of them held half as many packets), where 65,490
   * bytes fill one. Host-to-guest transfer with 64 KiB buffers ran 3-17%
   * faster, the agent using 130-160 ms of CPU per 256 MiB instead of 150-190
   * (docs/performance.md).
   */
  room(): number {
    const max = this.#maxPayload();
    if (max < 0 || !this.mergeable) return max;
    const aligned = this.#boundaryPayload(max);
    return aligned >= max / 2 ? aligned : max;
  }

  /** The largest payload the buffers posted now can hold, or -1. */
  #maxPayload(): number {
    this.#fill();
    if (this.#held === 0) return -1;
    const bytes = this.mergeable ? this.#heldBytes : this.#bytes[0]!;
    return Math.min(bytes - this.headerLength, MAX_PAYLOAD);
  }

  /**
   * The largest payload of at most `max` that, with the header, fills the
   * held buffers from chain `from` on exactly (negative when even the
   * first is too big).
   */
  #boundaryPayload(max: number, from = 0): number {
    let covered = 0;
    for (let i = from; i < this.#held; i++) {
      const next = covered + this.#bytes[i]!;
      if (next - this.headerLength > max) break;
      covered = next;
    }
    return covered - this.headerLength;
  }

  /**
   * Writes one packet. `header.len` is set from `payload`. Returns false,
   * writing nothing, when the posted buffers cannot hold it yet.
   *
   * @throws {RangeError} if the payload exceeds {@linkcode MAX_PAYLOAD}.
   */
  put(header: PacketHeader, payload: Uint8Array): boolean {
    if (payload.length > MAX_PAYLOAD) {
      throw new RangeError(
        `Cannot send a packet: payload of ${payload.length} bytes exceeds ${MAX_PAYLOAD}`,
      );
    }
    if (this.#maxPayload() < payload.length) return false;
    const total = this.headerLength + payload.length;

    // Which held chains the packet takes: the first k whose bytes cover it.
    let k = 0;
    let covered = 0;
    while (covered < total) covered += this.#bytes[k++]!;
    const lastSegEnd = this.#segEnd[k - 1]!;

    header.len = payload.length;
    encodeHeader(this.#hdr.view, 0, header);
    if (this.mergeable) {
      this.#hdr.view.setUint16(NUM_BUFFERS_OFFSET, k, true);
    }
    const region = this.queue.region;
    const cursor = this.#cursor;
    cursor.reset(this.#segments);
    cursor.write(
      region,
      this.#hdr.sized(this.headerLength),
      lastSegEnd,
    );
    cursor.write(region, payload, lastSegEnd);

    let remaining = total;
    for (let i = 0; i < k; i++) {
      const used = Math.min(this.#bytes[i]!, remaining);
      this.queue.push(this.#heads[i]!, used);
      remaining -= used;
    }
    this.queue.publish();
    this.#consume(k, lastSegEnd);
    return true;
  }

  /**
   * Sends up to `max` payload bytes read straight from `source` into the
   * posted buffers, as consecutive packets (each shaped as {@linkcode room}
   * would shape it), as many whole packets as fit in {@linkcode FILL_BYTES}
   * and at most {@linkcode FILL_PACKETS} at a time. `header` is every packet's header
   * but for `len` (and `num_buffers`). Returns the payload bytes sent
   * (setting {@linkcode filledPackets}), 0 when the buffers or the source
   * had nothing, or -1 at the source's end of input (nothing sent).
   *
   * @throws {SourceFailure} when the source fails; nothing is sent then.
   */
  sendFrom(header: PacketHeader, max: number, source: ByteSource): number {
    this.filledPackets = 0;
    const count = this.#plan(Math.floor(max));
    if (count === 0) return 0;
    const dest = this.#dest;
    const n = fillFrom(source, this.queue.region, dest);
    if (n === null) return -1;
    if (n === 0) return 0;

    // Packets in plan order, each taking what it planned until n runs out;
    // a short read leaves the chains after the last packet's bytes held.
    const region = this.queue.region;
    const cursor = this.#cursor;
    let at = 0;
    let chains = 0;
    let packets = 0;
    for (let j = 0; j < count && at < n; j++) {
      const len = Math.min(this.#planPayload[j]!, n - at);
      const first = this.#planChain[j]!;
      const total = this.headerLength + len;
      let k = 0;
      let covered = 0;
      while (covered < total) covered += this.#bytes[first + k++]!;
      header.len = len;
      encodeHeader(this.#hdr.view, 0, header);
      if (this.mergeable) {
        this.#hdr.view.setUint16(NUM_BUFFERS_OFFSET, k, true);
      }
      cursor.reset(this.#segments, this.#segStart(first));
      cursor.write(
        region,
        this.#hdr.sized(this.headerLength),
        this.#segEnd[first + k - 1]!,
      );
      let remaining = total;
      for (let i = first; i < first + k; i++) {
        const used = Math.min(this.#bytes[i]!, remaining);
        this.queue.push(this.#heads[i]!, used);
        remaining -= used;
      }
      at += len;
      chains = first + k;
      packets++;
    }
    this.queue.publish();
    this.#consume(chains, this.#segEnd[chains - 1]!);
    this.filledPackets = packets;
    return n;
  }

  /**
   * Plans packets for up to `max` payload bytes over the held chains, each
   * as {@linkcode room} would shape it (then cut to what is left of
   * `max`), as many whole packets as fit in {@linkcode FILL_BYTES}: fills
   * #planChain, #planPayload and #dest (their payload ranges, the headers'
   * bytes skipped). Returns how many packets. The cap never cuts a packet
   * short, which made a packet of a few bytes take a buffer of its own.
   */
  #plan(max: number): number {
    this.#fill(true);
    const dest = this.#dest;
    dest.clear();
    let chain = 0;
    let left = max;
    let count = 0;
    while (count < FILL_PACKETS && left > 0 && chain < this.#held) {
      let p = Math.min(this.#capacityFrom(chain), MAX_PAYLOAD);
      if (p <= 0) break;
      if (this.mergeable) {
        const aligned = this.#boundaryPayload(p, chain);
        if (aligned >= p / 2) p = aligned;
      }
      p = Math.min(p, left);
      if (count > 0 && max - left + p > FILL_BYTES) break;
      this.#planChain[count] = chain;
      this.#planPayload[count] = p;
      count++;
      left -= p;
      // The payload's ranges: the chains' segments after the header.
      const total = this.headerLength + p;
      let skip = this.headerLength;
      let want = p;
      const s = this.#segments;
      let covered = 0;
      for (let i = this.#segStart(chain); want > 0; i++) {
        const len = s.lengths[i]!;
        if (skip >= len) {
          skip -= len;
          continue;
        }
        const take = Math.min(len - skip, want);
        dest.push(s.offsets[i]! + skip, take);
        want -= take;
        skip = 0;
      }
      while (covered < total) covered += this.#bytes[chain++]!;
    }
    return count;
  }

  /** The payload the held chains from `chain` on can carry, or less than 1. */
  #capacityFrom(chain: number): number {
    if (!this.mergeable) return this.#bytes[chain]! - this.headerLength;
    let bytes = 0;
    for (let i = chain; i < this.#held; i++) bytes += this.#bytes[i]!;
    return bytes - this.headerLength;
  }

  /** Index into #segments of held chain `chain`'s first segment. */
  #segStart(chain: number): number {
    return chain === 0 ? 0 : this.#segEnd[chain - 1]!;
  }

  /**
   * Pops chains until the held ones can carry a full-size packet, or with
   * `many`, a full {@linkcode sendFrom}.
   */
  #fill(many = false): void {
    const need = many
      ? FILL_BYTES + FILL_PACKETS * this.headerLength
      : this.headerLength + MAX_PAYLOAD;
    const most = many ? FILL_PACKETS : 1;
    const q = this.queue;
    while (
      this.#held < this.#heads.length &&
      (this.mergeable ? this.#heldBytes < need : this.#held < most)
    ) {
      const scratch = this.#popScratch;
      scratch.clear();
      const head = q.pop(scratch);
      if (head < 0) return;
      if (scratch.bytes < this.headerLength) {
        this.#onDrop(
          `${q.name} queue: dropped a receive buffer of ${scratch.bytes} bytes, smaller than the ${this.headerLength}-byte header`,
        );
        q.push(head, 0);
        q.publish();
        continue;
      }
      for (let i = 0; i < scratch.count; i++) {
        this.#segments.push(scratch.offsets[i]!, scratch.lengths[i]!);
      }
      this.#heads[this.#held] = head;
      this.#segEnd[this.#held] = this.#segments.count;
      this.#bytes[this.#held] = scratch.bytes;
      this.#held++;
      this.#heldBytes += scratch.bytes;
    }
  }

  /** Forgets the first `k` held chains, which used segments `[0, segs)`. */
  #consume(k: number, segs: number): void {
    const s = this.#segments;
    const left = this.#held - k;
    for (let i = 0; i < k; i++) this.#heldBytes -= this.#bytes[i]!;
    if (left > 0) {
      this.#heads.copyWithin(0, k, this.#held);
      this.#bytes.copyWithin(0, k, this.#held);
      this.#segEnd.copyWithin(0, k, this.#held);
      for (let i = 0; i < left; i++) this.#segEnd[i]! -= segs;
      s.offsets.copyWithin(0, segs, s.count);
      s.lengths.copyWithin(0, segs, s.count);
    }
    s.count -= segs;
    s.bytes = this.#heldBytes;
    this.#held = left;
  }
}
