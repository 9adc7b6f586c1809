/**
 * Half-close, close, and the RST that ends a clean close, against a
 * scripted peer.
 */
import { assert, assertEquals, assertRejects } from "../../../dev_deps.ts";
import { OP, SHUTDOWN_F } from "../../../device/packets/header.ts";
import { VsockError } from "../../../device/vsock/errors.ts";
import {
  opName,
  ScriptedPeer,
  type Sent,
  tick,
} from "../../_support/scripted_peer.ts";

const from = { srcPort: 5000, dstPort: 80 };

/** What was sent, as [op name, flags] pairs. */
const opsAndFlags = (sent: Sent[]) =>
  sent.map((s) => [opName(s.h.op), s.h.flags]);

Deno.test("closing the writable sends SHUTDOWN(SEND) after the queued data, and reading goes on", async () => {
  const p = new ScriptedPeer();
  const conn = await p.open();
  const w = conn.writable.getWriter();
  const wrote = w.write(new Uint8Array(100));
  const closed = w.close();
  await tick();
  const sent = p.pump();
  await tick(); // the stream hands us close() once the write has gone out
  sent.push(...p.pump());
  assertEquals(sent.map((s) => opName(s.h.op)), ["RW", "SHUTDOWN"]);
  assertEquals(sent[1]!.h.flags, SHUTDOWN_F.SEND);
  await wrote;
  await closed;
  p.deliver({ op: OP.RW, ...from }, new Uint8Array([9]));
  assertEquals([...(await conn.readable.getReader().read()).value!], [9]);
  assertEquals(conn.state, "established");
  p.engine.close();
});

Deno.test("the peer's SHUTDOWN(SEND) ends the readable after the data before it; writing still works", async () => {
  const p = new ScriptedPeer();
  const conn = await p.open();
  p.deliver({ op: OP.RW, ...from }, new Uint8Array([1, 2]));
  p.deliver({ op: OP.SHUTDOWN, ...from, flags: SHUTDOWN_F.SEND });
  const reader = conn.readable.getReader();
  assertEquals([...(await reader.read()).value!], [1, 2]);
  assertEquals((await reader.read()).done, true);
  const w = conn.writable.getWriter();
  const wrote = w.write(new Uint8Array(5));
  await tick();
  assertEquals(p.pumpOps(), ["RW"]);
  await wrote;
  p.engine.close();
});

Deno.test("data after the peer's SHUTDOWN(SEND) resets the connection", async () => {
  const p = new ScriptedPeer();
  const conn = await p.open();
  p.deliver({ op: OP.SHUTDOWN, ...from, flags: SHUTDOWN_F.SEND });
  p.deliver({ op: OP.RW, ...from }, new Uint8Array(1));
  assertEquals(p.pumpOps(), ["RST"]);
  assertEquals((await conn.closed).reason, "EPROTO");
});

Deno.test("the peer's SHUTDOWN(RCV) fails queued writes with EPIPE", async () => {
  const p = new ScriptedPeer();
  const conn = await p.open();
  p.room = -1;
  const w = conn.writable.getWriter();
  const wrote = w.write(new Uint8Array(10));
  await tick();
  p.deliver({ op: OP.SHUTDOWN, ...from, flags: SHUTDOWN_F.RCV });
  const err = await assertRejects(() => wrote, VsockError);
  assertEquals(err.code, "EPIPE");
  p.engine.close();
});

Deno.test("close() sends SHUTDOWN both ways and ends when the peer answers RST", async () => {
  const p = new ScriptedPeer();
  const conn = await p.open();
  conn.close();
  const [sd] = p.pump();
  assertEquals([opName(sd!.h.op), sd!.h.flags], [
    "SHUTDOWN",
    SHUTDOWN_F.RCV | SHUTDOWN_F.SEND,
  ]);
  assertEquals(conn.state, "closing");
  p.deliver({ op: OP.RST, ...from });
  assertEquals((await conn.closed).reason, "closed");
  assertEquals(p.pump(), [], "no RST back");
});

Deno.test("close() sends RST itself when the peer does not answer within the close timeout", async () => {
  const p = new ScriptedPeer({ closeTimeoutMs: 20 });
  const conn = await p.open();
  conn.close();
  p.pump();
  const info = await conn.closed;
  assertEquals(info.reason, "closed");
  assert(info.message.includes("did not answer"), info.message);
  assertEquals(p.pumpOps(), ["RST"]);
});

Deno.test("closing while the peer closes too ends at once with RST instead of waiting out the close timeout", async () => {
  const p = new ScriptedPeer({ closeTimeoutMs: 60_000 });
  const conn = await p.open();
  conn.close();
  assertEquals(p.pumpOps(), ["SHUTDOWN"]);
  // The peer closed at the same moment: its SHUTDOWN(both) crossed ours.
  p.deliver({
    op: OP.SHUTDOWN,
    ...from,
    flags: SHUTDOWN_F.RCV | SHUTDOWN_F.SEND,
  });
  assertEquals(conn.state, "closed");
  assertEquals((await conn.closed).reason, "closed");
  assertEquals(p.pumpOps(), ["RST"], "the RST that ends the peer's wait");
});

Deno.test("closing keeps waiting while the peer has shut only one direction", async () => {
  const p = new ScriptedPeer({ closeTimeoutMs: 60_000 });
  const conn = await p.open();
  conn.close();
  p.pump();
  p.deliver({ op: OP.SHUTDOWN, ...from, flags: SHUTDOWN_F.SEND });
  assertEquals(conn.state, "closing");
  assertEquals(p.pumpOps(), []);
  p.deliver({ op: OP.RST, ...from });
  assertEquals((await conn.closed).reason, "closed");
});

Deno.test("close() sends queued data before its SHUTDOWN", async () => {
  const p = new ScriptedPeer();
  const conn = await p.open();
  conn.writable.getWriter().write(new Uint8Array(70_000)).catch(() => {});
  await tick();
  conn.close();
  assertEquals(p.pumpOps(), ["RW", "RW", "SHUTDOWN"]);
  p.engine.close();
});

Deno.test("a full peer shutdown with nothing unread is answered with RST", async () => {
  const p = new ScriptedPeer();
  const conn = await p.open();
  p.deliver({
    op: OP.SHUTDOWN,
    ...from,
    flags: SHUTDOWN_F.RCV | SHUTDOWN_F.SEND,
  });
  assertEquals(p.pumpOps(), ["RST"]);
  assertEquals((await conn.closed).reason, "closed");
  assertEquals((await conn.readable.getReader().read()).done, true);
});

Deno.test("a full peer shutdown waits until the application has read what is left", async () => {
  const p = new ScriptedPeer();
  const conn = await p.open();
  p.deliver({ op: OP.RW, ...from }, new Uint8Array([4, 5, 6]));
  p.deliver({
    op: OP.SHUTDOWN,
    ...from,
    flags: SHUTDOWN_F.RCV | SHUTDOWN_F.SEND,
  });
  assertEquals(p.pump(), [], "data is still unread");
  const reader = conn.readable.getReader();
  assertEquals([...(await reader.read()).value!], [4, 5, 6]);
  assertEquals((await reader.read()).done, true);
  assertEquals(p.pumpOps(), ["RST"]);
  assertEquals((await conn.closed).reason, "closed");
});

Deno.test("a half-closed connection closes itself once both directions are done", async () => {
  const p = new ScriptedPeer();
  const conn = await p.open();
  p.deliver({ op: OP.SHUTDOWN, ...from, flags: SHUTDOWN_F.SEND }); // peer is done sending
  const reader = conn.readable.getReader();
  assertEquals((await reader.read()).done, true);
  await conn.writable.getWriter().close(); // we are done too
  const sent = p.pump();
  assertEquals(opsAndFlags(sent), [[
    "SHUTDOWN",
    SHUTDOWN_F.RCV | SHUTDOWN_F.SEND,
  ]]);
  p.deliver({ op: OP.RST, ...from });
  assertEquals((await conn.closed).reason, "closed");
});

Deno.test("a proxy done reading that then ends its writes sends one SHUTDOWN(both), even with each request sent at once", async () => {
  const p = new ScriptedPeer().eager();
  const conn = await p.open();
  const before = p.sent.length;
  p.deliver({ op: OP.SHUTDOWN, ...from, flags: SHUTDOWN_F.SEND });
  assertEquals(await conn.read(), null); // the bridge sees EOF from the peer
  conn.closeWrite(); // and then from its socket
  assertEquals(
    opsAndFlags(p.sent.slice(before)),
    [["SHUTDOWN", SHUTDOWN_F.RCV | SHUTDOWN_F.SEND]],
  );
  p.deliver({ op: OP.RST, ...from });
  assertEquals((await conn.closed).reason, "closed");
});

Deno.test("an orderly proxied close takes three packets: SHUTDOWN(SEND), the peer's SHUTDOWN(both), RST", async () => {
  const p = new ScriptedPeer().eager();
  const conn = await p.open();
  const before = p.sent.length;
  conn.closeWrite(); // our socket's EOF first: the peer may still send
  p.deliver({
    op: OP.SHUTDOWN,
    ...from,
    flags: SHUTDOWN_F.RCV | SHUTDOWN_F.SEND,
  });
  assertEquals(await conn.read(), null);
  assertEquals(
    opsAndFlags(p.sent.slice(before)),
    [["SHUTDOWN", SHUTDOWN_F.SEND], ["RST", 0]],
  );
  assertEquals((await conn.closed).reason, "closed");
});

Deno.test("ending writes with data still queued sends it first, then one SHUTDOWN(both) once input is over", async () => {
  const p = new ScriptedPeer().eager();
  const conn = await p.open();
  p.deliver({ op: OP.SHUTDOWN, ...from, flags: SHUTDOWN_F.SEND });
  assertEquals(await conn.read(), null);
  p.room = -1; // the ring is full: the write waits
  const wrote = conn.write(new Uint8Array(10));
  conn.closeWrite();
  const before = p.sent.length;
  p.room = 4096;
  p.pump();
  await wrote;
  assertEquals(
    opsAndFlags(p.sent.slice(before)),
    [["RW", 0], ["SHUTDOWN", SHUTDOWN_F.RCV | SHUTDOWN_F.SEND]],
  );
  p.deliver({ op: OP.RST, ...from });
  assertEquals((await conn.closed).reason, "closed");
});

Deno.test("reset() sends RST even though the connection is already closed locally", async () => {
  const p = new ScriptedPeer();
  const conn = await p.open();
  conn.reset();
  assertEquals(conn.state, "closed");
  assertEquals(p.pumpOps(), ["RST"]);
  assertEquals(p.engine.connectionCount, 0);
  assertEquals((await conn.closed).reason, "ECONNABORTED");
});

Deno.test("writing to a closed connection fails with EPIPE", async () => {
  const p = new ScriptedPeer();
  const conn = await p.open();
  p.deliver({
    op: OP.SHUTDOWN,
    ...from,
    flags: SHUTDOWN_F.RCV | SHUTDOWN_F.SEND,
  });
  p.pump();
  const err = await assertRejects(
    () => conn.writable.getWriter().write(new Uint8Array(1)),
    VsockError,
  );
  assertEquals(err.code, "EPIPE");
});

Deno.test("deactivate() ends every connection with ENETRESET and keeps listeners", async () => {
  const p = new ScriptedPeer();
  const listener = p.engine.listen(80);
  p.deliver({ op: OP.REQUEST, srcPort: 5000, dstPort: 80 });
  p.pump();
  const conn = await listener.accept();
  p.engine.deactivate("TRANSPORT_RESET");
  assertEquals((await conn.closed).reason, "ENETRESET");
  assertEquals(p.pump(), [], "no packets onto a transport that is gone");
  p.engine.activate(2, 3, true);
  p.deliver({ op: OP.REQUEST, srcPort: 5001, dstPort: 80 });
  assertEquals(p.pumpOps(), ["RESPONSE"]);
  assertEquals((await listener.accept()).peerPort, 5001);
  listener.close();
  p.engine.close();
});
