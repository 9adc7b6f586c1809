/**
 * What the engine does with packets that do not belong: wrong CIDs,
 * unknown types and ops, packets for no connection, RSTs, and floods.
 */
import { assertEquals } from "../../../dev_deps.ts";
import { INVALID_CID, OP, TYPE } from "../../../device/packets/header.ts";
import { MAX_PENDING_REPLIES } from "../../../device/vsock/constants.ts";
import { ScriptedPeer } from "../../_support/scripted_peer.ts";

Deno.test("engine answers a packet for no connection with RST", () => {
  const p = new ScriptedPeer();
  p.deliver({ op: OP.RW, srcPort: 7, dstPort: 8 }, new Uint8Array(10));
  p.deliver({ op: OP.SHUTDOWN, srcPort: 7, dstPort: 9 });
  p.deliver({ op: OP.CREDIT_UPDATE, srcPort: 7, dstPort: 10 });
  assertEquals(p.pumpOps(), ["RST", "RST", "RST"]);
});

Deno.test("engine never answers an RST with an RST", async () => {
  const p = new ScriptedPeer();
  p.deliver({ op: OP.RST, srcPort: 7, dstPort: 8 });
  assertEquals(p.pump(), []);
  const conn = await p.open();
  p.deliver({ op: OP.RST, srcPort: 5000, dstPort: 80 });
  assertEquals(p.pump(), []);
  assertEquals((await conn.closed).reason, "ECONNRESET");
  // An RST of an unknown type is not answered either.
  p.deliver({ op: OP.RST, srcPort: 7, dstPort: 8, type: 99 });
  assertEquals(p.pump(), []);
});

Deno.test("engine answers an unknown socket type with RST", () => {
  const p = new ScriptedPeer();
  p.deliver({ op: OP.REQUEST, srcPort: 7, dstPort: 80, type: 9 });
  const [rst] = p.pump();
  assertEquals([rst!.h.op, rst!.h.type], [OP.RST, 9]);
  assertEquals(p.engine.stats.refused["unknown socket type N"], 1);
});

Deno.test("engine answers SEQPACKET with RST when it was not negotiated", () => {
  const p = new ScriptedPeer({}, false);
  p.engine.listen(80, { type: "seqpacket" });
  p.deliver({ op: OP.REQUEST, srcPort: 7, dstPort: 80, type: TYPE.SEQPACKET });
  assertEquals(p.pumpOps(), ["RST"]);
  assertEquals(p.engine.connectionCount, 0);
});

Deno.test("engine drops a packet from the wrong source CID without a reply", async () => {
  const p = new ScriptedPeer();
  const conn = await p.open();
  p.deliver(
    { op: OP.RW, srcCid: 4, srcPort: 5000, dstPort: 80 },
    new Uint8Array(5),
  );
  p.deliver({ op: OP.REQUEST, srcCid: INVALID_CID, srcPort: 1, dstPort: 80 });
  assertEquals(p.pump(), []);
  assertEquals(conn.unreadBytes, 0, "nothing reached the connection");
  assertEquals(p.engine.stats.dropped["source CID N is not the peer's (N)"], 1);
  assertEquals(
    p.engine.stats.dropped["source CID has reserved upper bits set"],
    1,
  );
  p.engine.close();
});

Deno.test("engine drops a packet addressed to another CID", () => {
  const p = new ScriptedPeer();
  p.deliver({ op: OP.REQUEST, dstCid: 5, srcPort: 1, dstPort: 80 });
  assertEquals(p.pump(), []);
});

Deno.test("engine drops an unknown op on an open connection and keeps it", async () => {
  const p = new ScriptedPeer();
  const conn = await p.open();
  p.deliver({ op: 99, srcPort: 5000, dstPort: 80 });
  p.deliver({ op: OP.INVALID, srcPort: 5000, dstPort: 80 });
  assertEquals(p.pump(), [], "Linux drops unknown ops on a connected socket");
  assertEquals(conn.state, "established");
  p.engine.close();
});

Deno.test("a REQUEST on an open connection resets it", async () => {
  const p = new ScriptedPeer();
  const conn = await p.open();
  p.deliver({ op: OP.REQUEST, srcPort: 5000, dstPort: 80 });
  assertEquals(p.pumpOps(), ["RST"]);
  assertEquals((await conn.closed).reason, "EPROTO");
});

Deno.test("a packet of the wrong type on an open connection resets it", async () => {
  const p = new ScriptedPeer();
  const conn = await p.open();
  p.deliver(
    { op: OP.RW, type: TYPE.SEQPACKET, srcPort: 5000, dstPort: 80 },
    new Uint8Array(1),
  );
  assertEquals(p.pumpOps(), ["RST"]);
  assertEquals((await conn.closed).reason, "EPROTO");
});

Deno.test("an RST storm for unknown connections gets no replies and queues nothing", () => {
  const p = new ScriptedPeer();
  for (let i = 0; i < 10_000; i++) {
    p.deliver({ op: OP.RST, srcPort: i, dstPort: i + 1 });
  }
  assertEquals(p.engine.pendingReplies, 0);
  assertEquals(p.pump(), []);
});

Deno.test("a flood of bogus packets is answered within a bounded queue and the rest counted", () => {
  const p = new ScriptedPeer();
  p.room = -1; // the peer posts no receive buffers
  for (let i = 0; i < 5000; i++) {
    p.deliver({ op: OP.RW, srcPort: i, dstPort: 9 }, new Uint8Array(1));
  }
  assertEquals(p.engine.pendingReplies, MAX_PENDING_REPLIES);
  assertEquals(
    p.engine.stats.dropped["reply queue full"],
    5000 - MAX_PENDING_REPLIES,
  );
  p.room = 65536;
  assertEquals(p.pump().length, MAX_PENDING_REPLIES);
});

Deno.test("a peer RST on an open connection errors both streams with ECONNRESET", async () => {
  const p = new ScriptedPeer();
  const conn = await p.open();
  const writer = conn.writable.getWriter();
  p.room = -1; // keep the write queued
  const write = writer.write(new Uint8Array(10));
  const read = conn.readable.getReader().read();
  p.deliver({ op: OP.RST, srcPort: 5000, dstPort: 80 });
  const [w, r] = await Promise.allSettled([write, read]);
  assertEquals(w.status, "rejected");
  assertEquals(r.status, "rejected");
  assertEquals(
    ((r as PromiseRejectedResult).reason as { code: string }).code,
    "ECONNRESET",
  );
});
