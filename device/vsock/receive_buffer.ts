/**
 * Received bytes waiting for the application, bounded by buf_alloc.
 *
 * For STREAM it is a queue of byte chunks. For SEQPACKET it also keeps the
 * message being assembled and the finished messages, so that reads return
 * whole messages with their EOR flag. Chunks are copies made as packets
 * arrive, so an idle connection holds no buffer at all.
 *
 * Memory is bounded twice: the bytes by buf_alloc (credit), and the number
 * of queued pieces by {@linkcode entries}, which the connection caps (each
 * piece costs a typed array whatever its length). STREAM payloads smaller
 * than {@linkcode MIN_CHUNK} are appended into the last chunk's spare room,
 * so a peer sending tiny packets within its credit costs one chunk per few
 * KiB, not one per packet, and never reaches that cap.
 *
 * @module
 */

import { VsockMessage } from "./vsock_message.ts";

/**
 * Smallest buffer a STREAM chunk queued behind unread data gets; later
 * payloads that fit its spare room are copied in (Linux coalesces small
 * packets into the previous skb the same way). Two neighbouring chunks
 * after the first always hold more than this, so the chunk count stays
 * below `2 * bytes / MIN_CHUNK + 2`.
 */
export const MIN_CHUNK = 4096;

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
   * STREAM: filled chunks, except the last, which is a whole buffer whose
   * first {@linkcode #tailUsed} bytes are filled.
   */
  #chunks: Uint8Array[] = [];
  #tailUsed = 0;
  /** SEQPACKET: finished messages. */
  #messages: VsockMessage[] = [];
  /** SEQPACKET: parts of the message being assembled. */
  #parts: Uint8Array[] = [];
  #partBytes = 0;

  constructor(seqpacket: boolean) {
    this.seqpacket = seqpacket;
  }

  /** Pieces held: chunks, or finished messages plus parts of the next. */
  get entries(): number {
    return this.#chunks.length + this.#messages.length + this.#parts.length;
  }

  /**
   * Appends a packet's `len`-byte payload, copied from `source`;
   * `eom`/`eor` for SEQPACKET.
   */
  push(len: number, source: PayloadSource, eom: boolean, eor: boolean): void {
    this.bytes += len;
    if (!this.seqpacket) {
      if (len > 0) this.#append(len, source);
      return;
    }
    if (len > 0) {
      const part = new Uint8Array(len);
      source.copyPayload(part);
      this.#parts.push(part);
      this.#partBytes += len;
    }
    if (eom) {
      const m = new VsockMessage(this.#partBytes);
      let at = 0;
      for (const p of this.#parts) {
        m.set(p, at);
        at += p.length;
      }
      m.eor = eor;
      this.#messages.push(m);
      this.#parts = [];
      this.#partBytes = 0;
    }
  }

  /** Whether a read can return something now. */
  get readable(): boolean {
    return this.seqpacket ? this.#messages.length > 0 : this.#chunks.length > 0;
  }

  /** The next chunk (STREAM) or whole message (SEQPACKET), or undefined. */
  shift(): Uint8Array | undefined {
    let next: Uint8Array | undefined;
    if (this.seqpacket) next = this.#messages.shift();
    else {
      next = this.#chunks.shift();
      if (next !== undefined && this.#chunks.length === 0) {
        // The last chunk leaves with what is filled; the next payload
        // starts a new one.
        next = next.subarray(0, this.#tailUsed);
        this.#tailUsed = 0;
      }
    }
    if (next !== undefined) this.bytes -= next.length;
    return next;
  }

  /** Drops everything; returns how many bytes were dropped. */
  clear(): number {
    const n = this.bytes;
    this.#chunks = [];
    this.#tailUsed = 0;
    this.#messages = [];
    this.#parts = [];
    this.#partBytes = 0;
    this.bytes = 0;
    return n;
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
    // payload in a buffer of its own size, as before.
    const chunk = new Uint8Array(
      tail === undefined ? len : Math.max(len, MIN_CHUNK),
    );
    source.copyPayload(chunk);
    this.#chunks.push(chunk);
    this.#tailUsed = len;
  }
}
