/**
 * The memory baseline: the least a Deno TCP relay does, accept and connect
 * upstream and pipe both ways. Usage: _relay.ts <listen port> <target port>
 *
 * @module
 */

const [listen, target] = Deno.args.map(Number);
const l = Deno.listen({ hostname: "127.0.0.1", port: listen! });
console.log("ready");
for await (const c of l) {
  (async () => {
    const up = await Deno.connect({ hostname: "127.0.0.1", port: target! });
    await Promise.allSettled([
      c.readable.pipeTo(up.writable),
      up.readable.pipeTo(c.writable),
    ]);
  })().catch(() => {});
}
