/**
 * Exact-length reads over a ReadableStream of byte chunks.
 *
 * @module
 */

/** Reads exactly n bytes at a time from a chunked stream. */
export class ByteReader {
  #reader: ReadableStreamDefaultReader<Uint8Array>;
  #left: Uint8Array = new Uint8Array(0);

  constructor(readable: ReadableStream<Uint8Array>) {
    this.#reader = readable.getReader();
  }

  /**
   * Calls `sink` with consecutive pieces totalling exactly `n` bytes.
   * @throws {Error} if the stream ends first.
   */
  async consume(n: number, sink: (piece: Uint8Array) => void): Promise<void> {
    while (n > 0) {
      if (this.#left.length === 0) {
        const r = await this.#reader.read();
        if (r.done) {
          throw new Error(`stream ended with ${n} bytes still expected`);
        }
        this.#left = r.value;
      }
      const take = Math.min(n, this.#left.length);
      sink(this.#left.subarray(0, take));
      this.#left = this.#left.subarray(take);
      n -= take;
    }
  }

  /** Exactly `n` bytes as one array. */
  async exactly(n: number): Promise<Uint8Array> {
    const out = new Uint8Array(n);
    let at = 0;
    await this.consume(n, (p) => {
      out.set(p, at);
      at += p.length;
    });
    return out;
  }

  /** Resolves true if the stream is at its end (no more bytes). */
  async atEnd(): Promise<boolean> {
    if (this.#left.length > 0) return false;
    const r = await this.#reader.read();
    if (r.done) return true;
    this.#left = r.value;
    return false;
  }

  release(): void {
    this.#reader.releaseLock();
  }
}
