/**
 * The direct API of a connection (read(), write(), writeStopped), which the
 * TCP bridges use instead of its Web Streams, and the streams created only
 * on first use.
 */
import { assertEquals, assertRejects } from "../../../dev_deps.ts";
import { OP, SHUTDOWN_F } from "../../../device/packets/header.ts";
import { VsockError } from "../../../device/vsock/errors.ts";
import { ScriptedPeer, tick } from "../../_support/scripted_peer.ts";

const from = { srcPort: 5000, dstPort: 80 };

Deno.test("read() returns what arrived, waits for more, and returns null after the peer's SHUTDOWN(SEND)", async () => {
  const p = new ScriptedPeer();
  const conn = await p.open();
  p.deliver({ op: OP.RW, ...from }, new Uint8Array([1, 2]));
  assertEquals([...(await conn.read())!], [1, 2]);
  const later = conn.read();
  p.deliver({ op: OP.RW, ...from }, new Uint8Array([3]));
  assertEquals([...(await later)!], [3]);
  p.deliver({ op: OP.SHUTDOWN, ...from, flags: SHUTDOWN_F.SEND });
  assertEquals(await conn.read(), null);
  p.engine.close();
});

Deno.test("read() rejects with ECONNRESET once the peer resets", async () => {
  const p = new ScriptedPeer();
  const conn = await p.open();
  const pending = conn.read();
  p.deliver({ op: OP.RST, ...from });
  const err = await assertRejects(() => pending, VsockError);
  assertEquals(err.code, "ECONNRESET");
});

Deno.test("write() sends, and writeStopped resolves when the peer shuts down receiving", async () => {
  const p = new ScriptedPeer();
  const conn = await p.open();
  let stopped = false;
  conn.writeStopped.then(() => (stopped = true));
  const wrote = conn.write(new Uint8Array(10));
  await tick();
  assertEquals(p.pumpOps(), ["RW"]);
  await wrote;
  await tick();
  assertEquals(stopped, false);
  p.deliver({ op: OP.SHUTDOWN, ...from, flags: SHUTDOWN_F.RCV });
  await tick();
  assertEquals(stopped, true);
  await assertRejects(() => conn.write(new Uint8Array(1)), VsockError);
  p.engine.close();
});

Deno.test("a writable first used after sending stopped starts errored", async () => {
  const p = new ScriptedPeer();
  const conn = await p.open();
  p.deliver({ op: OP.SHUTDOWN, ...from, flags: SHUTDOWN_F.RCV });
  const writer = conn.writable.getWriter();
  await assertRejects(() => writer.write(new Uint8Array(1)));
  await conn.writeStopped; // resolved already: does not hang
  p.engine.close();
});
