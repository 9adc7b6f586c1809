/**
 * Received bytes waiting for the application, bounded by buf_alloc.
 *
 * For STREAM it is a queue of byte chunks. For SEQPACKET it also keeps the
 * message being assembled and the finished messages, so that reads return
 * whole messages with their EOR flag. Chunks are copies made as packets
 * arrive, so an idle connection holds no buffer at all.
 *
 * @module
 */

import { VsockMessage } from "./vsock_message.ts";

/** Unread received data of one connection. */
export class ReceiveBuffer {
  readonly seqpacket: boolean;
  /** Bytes held (unread), including a partial message. */
  bytes = 0;
  #chunks: Uint8Array[] = [];
  /** SEQPACKET: finished messages. */
  #messages: VsockMessage[] = [];
  /** SEQPACKET: parts of the message being assembled. */
  #parts: Uint8Array[] = [];
  #partBytes = 0;

  constructor(seqpacket: boolean) {
    this.seqpacket = seqpacket;
  }

  /** Appends a packet's payload (already copied); `eom`/`eor` for SEQPACKET. */
  push(chunk: Uint8Array, eom: boolean, eor: boolean): void {
    this.bytes += chunk.length;
    if (!this.seqpacket) {
      if (chunk.length > 0) this.#chunks.push(chunk);
      return;
    }
    if (chunk.length > 0) {
      this.#parts.push(chunk);
      this.#partBytes += chunk.length;
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
    const next = this.seqpacket ? this.#messages.shift() : this.#chunks.shift();
    if (next !== undefined) this.bytes -= next.length;
    return next;
  }

  /** Drops everything; returns how many bytes were dropped. */
  clear(): number {
    const n = this.bytes;
    this.#chunks = [];
    this.#messages = [];
    this.#parts = [];
    this.#partBytes = 0;
    this.bytes = 0;
    return n;
  }
}
