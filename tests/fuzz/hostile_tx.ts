/**
 * The hostile actor's way onto the tx queue: it borrows the well-behaved
 * driver's DriverTx and DriverQueue (one guest, one queue), so the space its
 * packets occupy is allocated and reclaimed like any other packet's, then
 * rewrites what it sent before publishing.
 *
 * The actor runs between the runners' turns, when every chain the driver
 * added is already published; so the chain it just added sits in the
 * available ring at the published index plus the number it added since.
 *
 * @module
 */

import type { Region } from "../../device/shm/region.ts";
import type { DriverQueues } from "../../device/transport/driver_transport.ts";
import {
  HDR_LEN,
  newHeader,
  type PacketHeader,
} from "../../device/packets/header.ts";
import {
  AVAIL_IDX,
  AVAIL_RING,
  DESC_ADDR,
  DESC_LEN,
  DESC_SIZE,
} from "../../device/virtqueue/split_ring.ts";

/** One chain the actor added: its head and where its bytes went. */
export interface SentChain {
  head: number;
  /** Ring position (free-running) it occupies. */
  position: number;
  /** Offset of its (single) buffer. */
  addr: number;
  length: number;
}

/** Adds chains to the tx queue on the actor's behalf, then publishes them. */
export class HostileTx {
  readonly region: Region;
  readonly queues: DriverQueues;
  #added = 0;
  #published: number;

  constructor(region: Region, queues: DriverQueues) {
    this.region = region;
    this.queues = queues;
    this.#published = region.load16(queues.tx.layout.avail + AVAIL_IDX);
  }

  /** Chains added and not yet published. */
  get added(): number {
    return this.#added;
  }

  /**
   * Sends `bytes` as the whole content of one chain (header and payload,
   * whatever they say), through the driver's own transmit space. Returns
   * the chain, or `null` when the queue or the space is full.
   */
  sendRaw(bytes: Uint8Array): SentChain | null {
    const payload = new Uint8Array(Math.max(0, bytes.length - HDR_LEN));
    const sent = this.send(newHeader(), payload);
    if (sent === null) return null;
    this.region.write(sent.addr, bytes);
    if (bytes.length < HDR_LEN) {
      // Shrink the descriptor: a chain shorter than a header.
      this.setDescLength(sent.head, bytes.length);
      sent.length = bytes.length;
    }
    return sent;
  }

  /** Sends a packet as the driver would (its `len` set from `payload`). */
  send(header: PacketHeader, payload: Uint8Array): SentChain | null {
    const tx = this.queues.driverTx;
    if (!tx.send(header, payload)) return null;
    const layout = this.queues.tx.layout;
    const position = (this.#published + this.#added) & 0xffff;
    this.#added++;
    const head = this.region.getU16(
      layout.avail + AVAIL_RING + 2 * (position % layout.size),
    );
    const at = layout.desc + head * DESC_SIZE;
    return {
      head,
      position,
      addr: this.region.getOffset64(at + DESC_ADDR),
      length: this.region.getU32(at + DESC_LEN),
    };
  }

  /**
   * Adds a chain of its own making (`queue.addChain`): the driver's shadow
   * still frees the right descriptors when the device returns it, whatever
   * the actor then writes into the table. Returns the head, or -1.
   */
  addChain(offsets: number[], lengths: number[]): number {
    const head = this.queues.tx.addChain(offsets, lengths, offsets.length);
    if (head >= 0) this.#added++;
    return head;
  }

  /** Descriptor indices of the chain at `head`, as the driver linked them. */
  chainIndices(head: number, count: number): number[] {
    const layout = this.queues.tx.layout;
    const out = [head];
    for (let i = 1; i < count; i++) {
      out.push(
        this.region.getU16(layout.desc + out[i - 1]! * DESC_SIZE + 14),
      );
    }
    return out;
  }

  setDescLength(index: number, length: number): void {
    const layout = this.queues.tx.layout;
    this.region.setU32(layout.desc + index * DESC_SIZE + DESC_LEN, length);
  }

  /** Swaps two unpublished ring positions (to order what the device sees). */
  swapPositions(a: number, b: number): void {
    const layout = this.queues.tx.layout;
    const at = (p: number) => layout.avail + AVAIL_RING + 2 * (p % layout.size);
    const ha = this.region.getU16(at(a));
    this.region.setU16(at(a), this.region.getU16(at(b)));
    this.region.setU16(at(b), ha);
  }

  /** Position the next added chain will take. */
  get nextPosition(): number {
    return (this.#published + this.#added) & 0xffff;
  }

  /** Makes everything added visible to the device. */
  publish(): void {
    this.queues.tx.publish();
    this.#published = (this.#published + this.#added) & 0xffff;
    this.#added = 0;
  }
}
