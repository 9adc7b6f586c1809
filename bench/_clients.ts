/**
 * What the benchmarks do on the client side, over plain TCP, the same
 * whether the far end is ivsock, socat or the server itself.
 *
 * @module
 */

const MIB = 1024 * 1024;

/**
 * One end of a bulk transfer, whatever carries it: the client writes whole
 * chunks, half-closes, then reads the sink's answer to the end.
 */
export interface BulkStream {
  /** Resolves once `chunk` may be reused. */
  writeAll(chunk: Uint8Array): Promise<void>;
  closeWrite(): Promise<void>;
  /** The answer's next bytes, or null at its end. */
  read(): Promise<Uint8Array | null>;
  close(): void;
}

/**
 * Sends `mib` MiB in 64 KiB writes to a sink, half-closes, waits for the
 * sink's byte count; returns MiB/s.
 */
export async function bulk(port: number, mib: number): Promise<number> {
  const c = await Deno.connect({ hostname: "127.0.0.1", port });
  c.setNoDelay(true);
  const buf = new Uint8Array(32);
  return await bulkOver({
    async writeAll(chunk) {
      let at = 0;
      while (at < chunk.length) at += await c.write(chunk.subarray(at));
    },
    closeWrite: () => c.closeWrite(),
    async read() {
      const n = await c.read(buf);
      return n === null ? null : buf.subarray(0, n);
    },
    close: () => c.close(),
  }, mib);
}

/**
 * {@linkcode bulk} over a stream already open: the timing and the check
 * that every client runs, over TCP or over vsock (`bench/_guest.ts`).
 */
export async function bulkOver(c: BulkStream, mib: number): Promise<number> {
  const chunk = new Uint8Array(64 * 1024).fill(0x5a);
  const t0 = performance.now();
  for (let i = 0; i < mib * 16; i++) await c.writeAll(chunk);
  await c.closeWrite();
  let text = "";
  for (;;) {
    const got = await c.read();
    if (got === null) break;
    text += new TextDecoder().decode(got);
  }
  const ms = performance.now() - t0;
  c.close();
  if (Number(text) !== mib * MIB) {
    throw new Error(`the sink counted ${text} bytes, expected ${mib * MIB}`);
  }
  return mib / (ms / 1000);
}

/** 64-byte ping-pongs; returns the round trips in microseconds, sorted. */
export async function pingPong(port: number, count: number): Promise<number[]> {
  const c = await Deno.connect({ hostname: "127.0.0.1", port });
  c.setNoDelay(true);
  const b = new Uint8Array(64);
  const out: number[] = [];
  for (let i = 0; i < count; i++) {
    const t = performance.now();
    await c.write(b);
    let got = 0;
    while (got < 64) {
      const n = await c.read(b.subarray(got));
      if (n === null) throw new Error("the echo closed the connection");
      got += n;
    }
    out.push((performance.now() - t) * 1000);
  }
  c.close();
  return out.sort((x, y) => x - y);
}

/** The value at quantile `q` of a sorted list. */
export function quantile(sorted: number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
}

/**
 * Opens `count` connections through `port`, `parallel` at a time; each
 * sends one byte and waits for the echo (so the far end really answered)
 * and closes. Returns connections per second.
 */
export async function connectRate(
  port: number,
  count: number,
  parallel: number,
): Promise<number> {
  let next = 0;
  const one = async () => {
    const c = await Deno.connect({ hostname: "127.0.0.1", port });
    c.setNoDelay(true);
    const b = new Uint8Array([1]);
    await c.write(b);
    const n = await c.read(b);
    c.close();
    if (n !== 1) throw new Error("no echo");
  };
  const t0 = performance.now();
  await Promise.all(Array.from({ length: parallel }, async () => {
    while (next < count) {
      next++;
      await one();
    }
  }));
  return count / ((performance.now() - t0) / 1000);
}

/**
 * Opens `count` connections through `port` (`parallel` at a time), each
 * proven live by a one-byte echo, and keeps them open. Returns them.
 */
export async function openIdle(
  port: number,
  count: number,
  parallel = 64,
): Promise<Deno.TcpConn[]> {
  const conns: Deno.TcpConn[] = [];
  let next = 0;
  await Promise.all(Array.from({ length: parallel }, async () => {
    while (next < count) {
      next++;
      const c = await Deno.connect({ hostname: "127.0.0.1", port });
      const b = new Uint8Array([1]);
      await c.write(b);
      if ((await c.read(b)) !== 1) throw new Error("no echo");
      conns.push(c);
    }
  }));
  return conns;
}
