/**
 * A received packet as the protocol layer sees it: a decoded header and the
 * payload as one or more views into shared memory. The views are valid only
 * until the receiver is asked for the next packet; copy what you keep.
 *
 * @module
 */

import { newHeader, type PacketHeader } from "./header.ts";

/** A decoded header plus its payload in chunks (no copies made). */
export class InboundPacket {
  readonly header: PacketHeader = newHeader();
  /** Payload chunks; only the first {@linkcode count} are valid. */
  readonly chunks: Uint8Array[] = [];
  count = 0;

  /** Resets the chunk list (the header is overwritten by the decoder). */
  clear(): void {
    this.count = 0;
  }

  addChunk(chunk: Uint8Array): void {
    if (chunk.length === 0) return;
    if (this.count < this.chunks.length) this.chunks[this.count] = chunk;
    else this.chunks.push(chunk);
    this.count++;
  }

  /** Copies the payload into `dest` at `at`; returns the bytes copied. */
  copyPayload(dest: Uint8Array, at = 0): number {
    let n = 0;
    for (let i = 0; i < this.count; i++) {
      const c = this.chunks[i]!;
      dest.set(c, at + n);
      n += c.length;
    }
    return n;
  }

  /** The payload as a fresh array (for tests and rare paths). */
  payloadCopy(): Uint8Array {
    const out = new Uint8Array(this.header.len);
    this.copyPayload(out);
    return out;
  }
}
