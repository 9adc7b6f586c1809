/**
 * Benchmark child: loopback TCP servers, one per argument `kind` (sink,
 * echo or hold), each on a free port. Prints `ready kind=port ...`.
 *
 * - sink: reads to EOF, answers with the byte count, closes;
 * - echo: writes back what it reads (TCP_NODELAY), closes at EOF;
 * - hold: accepts and keeps the connection open, reading and discarding.
 *
 * @module
 */

const handlers: Record<string, (c: Deno.TcpConn) => Promise<void>> = {
  async sink(c) {
    const buf = new Uint8Array(256 * 1024);
    let n = 0;
    for (;;) {
      const r = await c.read(buf);
      if (r === null) break;
      n += r;
    }
    await c.write(new TextEncoder().encode(String(n)));
  },
  async echo(c) {
    const buf = new Uint8Array(64 * 1024);
    for (;;) {
      const r = await c.read(buf);
      if (r === null) break;
      let at = 0;
      while (at < r) at += await c.write(buf.subarray(at, r));
    }
  },
  async hold(c) {
    const buf = new Uint8Array(1024);
    for (;;) {
      const r = await c.read(buf);
      if (r === null) break;
      await c.write(buf.subarray(0, r));
    }
  },
};

const ports: string[] = [];
for (const kind of Deno.args) {
  const handler = handlers[kind];
  if (handler === undefined) throw new Error(`unknown server kind ${kind}`);
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  ports.push(`${kind}=${(l.addr as Deno.NetAddr).port}`);
  (async () => {
    for await (const c of l) {
      c.setNoDelay(true);
      handler(c).catch(() => {}).finally(() => {
        try {
          c.close();
        } catch {
          // Closed.
        }
      });
    }
  })();
}
console.log(`ready ${ports.join(" ")}`);
