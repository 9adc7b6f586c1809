/**
 * Received bytes waiting for the application, bounded by buf_alloc.
 *
 * The bytes are a queue of chunks, copied as packets arrive, so an idle
 * connection holds no buffer at all. STREAM reads take whole chunks, joined
 * up to a limit that grows with the receive window ({@linkcode joinLimit})
 * when several are queued. For
 * SEQPACKET the same chunks hold the messages back to back and a
 * {@linkcode MessageRing} their lengths and EOR flags, so that reads return
 * whole messages, copied out of the chunks.
 *
 * Memory is bounded twice: the bytes by buf_alloc (credit), and the number
 * of queued pieces by {@linkcode entries}, which the connection caps because
 * an empty SEQPACKET message uses no credit at all. Payloads smaller than
 * {@linkcode MIN_CHUNK} are appended into the last chunk's spare room, so a
 * peer sending tiny packets within its credit costs one chunk per few KiB
 * and five bytes per message, not a typed array (about 210 bytes) per
 * packet; a peer that keeps to its credit and sends no empty messages can
 * never reach the cap.
 *
 * @module
 */

import { allocChunk, POOLED_BYTES, recycleChunk } from "./chunk_pool.ts";
import { MessageRing } from "./message_ring.ts";
import { VsockMessage } from "./vsock_message.ts";

/**
 * Smallest buffer a chunk queued behind unread data gets; later payloads
 * that fit its spare room are copied in (Linux coalesces small packets into
 * the previous skb the same way). Two neighbouring chunks after the first
 * always hold more than this, so the chunk count stays below
 * `2 * bytes / MIN_CHUNK + 2`.
 */
export const MIN_CHUNK = 4096;

/**
 * Most bytes one STREAM read joins from several queued chunks: four 64 KiB
 * packets' worth, as the bridges read their sockets, and the largest pooled
 * buffer (chunk_pool.ts), so that a joined read fits one. Against 64 KiB,
 * the bridge writes its socket up to four times less often: guest-to-host
 * bulk transfer ran 10-17% faster through the whole path and 30-40% from
 * the agent process, host to guest up to 22% (docs/performance.md).
 */
export const MAX_READ = POOLED_BYTES;

/**
 * The {@linkcode ReceiveBuffer.limit} for a receive window of `bufAlloc`: a
 * quarter of the window, up to {@linkcode MAX_READ}. A reader whose window
 * is full then still leaves most of it unread after a read, so the window
 * does not grow for it (`growBufAlloc`): a slow reader keeps its starting
 * window, while a fast one reads 256 KiB at a time once its window has
 * grown to 1 MiB.
 */
export function joinLimit(bufAlloc: number): number {
  return Math.min(MAX_READ, Math.max(MIN_CHUNK, bufAlloc >>> 2));
}

/** The message ring of every STREAM buffer: never pushed to. */
const NO_MESSAGES = new MessageRing();

/** Where a packet's payload is copied from (an `InboundPacket`). */
export interface PayloadSource {
  /** Copies the payload into `dest` at `at`; returns the bytes copied. */
  copyPayload(dest: Uint8Array, at?: number): number;
}

/** Unread received data of one connection. */
export class ReceiveBuffer {
  readonly seqpacket: boolean;
  /** Bytes held (unread), including a partial message. */
  bytes = 0;
  /**
   * Most bytes a STREAM read joins, and the largest chunk that payloads
   * behind unread data are gathered into (a first chunk larger than this
   * would make a read larger): the owner sets it from its receive window
   * ({@linkcode joinLimit}).
   */
  limit = MAX_READ;
  /**
   * Filled chunks, except the last, which is a whole buffer whose first
   * {@linkcode #tailUsed} bytes are filled. SEQPACKET reads may have taken
   * the first {@linkcode #headUsed} bytes of the first chunk already.
   */
  #chunks: Uint8Array[] = [];
  #tailUsed = 0;
  #headUsed = 0;
  /** SEQPACKET: finished messages. */
  #messages: MessageRing;
  /** SEQPACKET: bytes of the message being assembled (already in chunks). */
  #partBytes = 0;

  constructor(seqpacket: boolean) {
    this.seqpacket = seqpacket;
    // A STREAM connection never queues messages: it shares one empty ring
    // instead of holding its own typed arrays.
    this.#messages = seqpacket ? new MessageRing() : NO_MESSAGES;
  }

  /** Pieces held: STREAM chunks, or SEQPACKET messages (finished or not). */
  get entries(): number {
    return this.seqpacket
      ? this.#messages.count + (this.#partBytes > 0 ? 1 : 0)
      : this.#chunks.length;
  }

  /**
   * Appends a packet's `len`-byte payload, copied from `source`;
   * `eom`/`eor` for SEQPACKET.
   */
  push(len: number, source: PayloadSource, eom: boolean, eor: boolean): void {
    this.bytes += len;
    if (len > 0) this.#append(len, source);
    if (!this.seqpacket) return;
    this.#partBytes += len;
    if (eom) {
      this.#messages.push(this.#partBytes, eor);
      this.#partBytes = 0;
    }
  }

  /** Whether a read can return something now. */
  get readable(): boolean {
    return this.seqpacket ? this.#messages.count > 0 : this.#chunks.length > 0;
  }

  /**
   * The next bytes (STREAM: every queued chunk that fits in
   * {@linkcode limit}, joined) or whole message (SEQPACKET), or undefined.
   */
  shift(): Uint8Array | undefined {
    if (this.seqpacket) return this.#shiftMessage();
    const first = this.#shiftChunk();
    if (first === undefined) return undefined;
    let total = first.length;
    let n = 0;
    while (n < this.#chunks.length) {
      const len = n === this.#chunks.length - 1
        ? this.#tailUsed
        : this.#chunks[n]!.length;
      if (total + len > this.limit) break;
      total += len;
      n++;
    }
    if (n === 0) return first;
    // A turn of the run loop delivers many packets before the reader runs:
    // hand them over as one piece, so that the bridge writes its socket in
    // large pieces. With 4 KiB rx buffers it made one write(2) per packet,
    // which took 40% of the guest agent's time.
    const out = allocChunk(total);
    out.set(first);
    recycleChunk(first);
    let at = first.length;
    for (let i = 0; i < n; i++) {
      const chunk = this.#shiftChunk()!;
      out.set(chunk, at);
      recycleChunk(chunk);
      at += chunk.length;
    }
    return out;
  }

  #shiftChunk(): Uint8Array | undefined {
    let next = this.#chunks.shift();
    if (next !== undefined && this.#chunks.length === 0) {
      // The last chunk leaves with what is filled; the next payload starts
      // a new one.
      next = next.subarray(0, this.#tailUsed);
      this.#tailUsed = 0;
    }
    if (next !== undefined) this.bytes -= next.length;
    return next;
  }

  /** Drops everything; returns how many bytes were dropped. */
  clear(): number {
    const n = this.bytes;
    for (const chunk of this.#chunks) recycleChunk(chunk);
    this.#chunks = [];
    this.#tailUsed = 0;
    this.#headUsed = 0;
    if (this.seqpacket) this.#messages.clear();
    this.#partBytes = 0;
    this.bytes = 0;
    return n;
  }

  #shiftMessage(): VsockMessage | undefined {
    if (this.#messages.count === 0) return undefined;
    const m = new VsockMessage(this.#messages.firstLength);
    m.eor = this.#messages.shift();
    let at = 0;
    while (at < m.length) {
      const chunk = this.#chunks[0]!;
      const end = this.#chunks.length === 1 ? this.#tailUsed : chunk.length;
      const take = Math.min(end - this.#headUsed, m.length - at);
      // Messages are queued only after their bytes, so this cannot happen;
      // if it ever did, failing beats spinning.
      if (take <= 0) throw new Error("receive buffer: message bytes missing");
      m.set(chunk.subarray(this.#headUsed, this.#headUsed + take), at);
      at += take;
      this.#headUsed += take;
      if (this.#headUsed === end && this.#chunks.length > 1) {
        this.#chunks.shift();
        this.#headUsed = 0;
      }
    }
    if (this.#headUsed === this.#tailUsed && this.#chunks.length === 1) {
      // Everything read: the next payload starts a new chunk.
      this.#chunks = [];
      this.#headUsed = 0;
      this.#tailUsed = 0;
    }
    this.bytes -= m.length;
    return m;
  }

  #append(len: number, source: PayloadSource): void {
    const last = this.#chunks.length - 1;
    const tail = this.#chunks[last];
    if (tail !== undefined && tail.length - this.#tailUsed >= len) {
      source.copyPayload(tail, this.#tailUsed);
      this.#tailUsed += len;
      return;
    }
    // The old tail is final now: keep only its filled bytes in view.
    if (tail !== undefined) {
      this.#chunks[last] = tail.subarray(0, this.#tailUsed);
    }
    // Spare room only behind unread data: a reader that keeps up gets each
    // payload in a chunk of its own size (from the pool: a buffer of at most
    // twice that, or 64 bytes). Behind unread data the room grows with it
    // (up to the limit), so a burst of 4 KiB packets fills a few large
    // chunks rather than one allocation each (that was a tenth of the guest
    // agent's time), while spare room never exceeds what is unread, plus
    // MIN_CHUNK.
    const chunk = allocChunk(
      tail === undefined
        ? len
        : Math.max(len, MIN_CHUNK, Math.min(this.limit, this.bytes)),
    );
    source.copyPayload(chunk);
    this.#chunks.push(chunk);
    this.#tailUsed = len;
  }
}
