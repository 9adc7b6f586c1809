/**
 * The lengths and EOR flags of queued SEQPACKET messages, in a ring of
 * typed arrays: five bytes a message, where a typed array per message would
 * cost two hundred. Their bytes live elsewhere (see `receive_buffer.ts`).
 *
 * @module
 */

/** Capacity a ring starts with, and shrinks back to once emptied. */
const INITIAL = 16;

/** A FIFO of (length, eor) pairs that grows by doubling. */
export class MessageRing {
  #lengths = new Uint32Array(INITIAL);
  #eor = new Uint8Array(INITIAL);
  #head = 0;
  count = 0;

  /** Appends a message of `length` bytes. */
  push(length: number, eor: boolean): void {
    if (this.count === this.#lengths.length) this.#grow();
    const at = (this.#head + this.count) & (this.#lengths.length - 1);
    this.#lengths[at] = length;
    this.#eor[at] = eor ? 1 : 0;
    this.count++;
  }

  /** Length of the oldest message; the ring must not be empty. */
  get firstLength(): number {
    return this.#lengths[this.#head]!;
  }

  /** Removes the oldest message; returns its EOR flag. */
  shift(): boolean {
    const eor = this.#eor[this.#head] === 1;
    this.#head = (this.#head + 1) & (this.#lengths.length - 1);
    this.count--;
    // A burst that was read out should not keep its memory.
    if (this.count === 0 && this.#lengths.length > INITIAL) this.clear();
    return eor;
  }

  clear(): void {
    this.#lengths = new Uint32Array(INITIAL);
    this.#eor = new Uint8Array(INITIAL);
    this.#head = 0;
    this.count = 0;
  }

  #grow(): void {
    const size = this.#lengths.length;
    const lengths = new Uint32Array(size * 2);
    const eor = new Uint8Array(size * 2);
    // Unwrap: oldest first, at index 0.
    const first = size - this.#head;
    lengths.set(this.#lengths.subarray(this.#head));
    lengths.set(this.#lengths.subarray(0, this.#head), first);
    eor.set(this.#eor.subarray(this.#head));
    eor.set(this.#eor.subarray(0, this.#head), first);
    this.#lengths = lengths;
    this.#eor = eor;
    this.#head = 0;
  }
}
