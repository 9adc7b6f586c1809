/**
 * ChunkReader sizes its read buffer to the traffic: small while messages
 * are small (an idle connection's pending read holds little), growing to
 * READ_SIZE for bulk data.
 */
import { assert, assertEquals } from "../../dev_deps.ts";
import { ChunkReader, READ_SIZE } from "../../proxy/tcp_streams.ts";
import { Prng } from "../_support/prng.ts";

Deno.test("ChunkReader starts with small reads, grows them to READ_SIZE for bulk data, and delivers every byte in order", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  const data = new Prng(3).bytes(4 << 20);
  const sending = (async () => {
    const c = await listener.accept();
    let at = 0;
    while (at < data.length) at += await c.write(data.subarray(at));
    c.close();
  })();
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const sizes: number[] = [];
  const got = new Uint8Array(data.length);
  let at = 0;
  const reader = new ChunkReader(conn);
  for (
    let chunk = await reader.readView();
    chunk !== null;
    chunk = await reader.readView()
  ) {
    sizes.push(chunk.length);
    got.set(chunk, at);
    at += chunk.length;
  }
  conn.close();
  await sending;
  listener.close();
  assertEquals(at, data.length);
  assert(got.every((b, i) => b === data[i]), "bytes in order");
  assert(sizes[0]! <= 1024, `first read ${sizes[0]} bytes, at most 1 KiB`);
  assertEquals(Math.max(...sizes), READ_SIZE, "bulk reads reach READ_SIZE");
});

Deno.test("ChunkReader.readView() returns views of the reader's own buffer, which the next read reuses", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const server = await listener.accept();
  const reader = new ChunkReader(conn);
  await server.write(new Uint8Array([1, 2, 3]));
  const first = (await reader.readView())!;
  assertEquals([...first], [1, 2, 3]);
  await server.write(new Uint8Array([9]));
  const second = (await reader.readView())!;
  assertEquals([...second], [9]);
  assertEquals(second.buffer, first.buffer, "the same buffer, reused");
  assertEquals(first[0], 9, "the first view now shows the second read");
  server.close();
  assertEquals(await reader.readView(), null);
  conn.close();
  listener.close();
});
