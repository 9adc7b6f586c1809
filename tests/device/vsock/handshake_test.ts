/**
 * Connection set-up and refusal, packet by packet against a scripted peer.
 */
import { assert, assertEquals, assertRejects } from "../../../dev_deps.ts";
import { OP, TYPE } from "../../../device/packets/header.ts";
import { VsockError } from "../../../device/vsock/errors.ts";
import {
  LOCAL_CID,
  opName,
  PEER_CID,
  ScriptedPeer,
  tick,
} from "../../_support/scripted_peer.ts";

Deno.test("engine answers a REQUEST to a listening port with RESPONSE and hands over the connection", async () => {
  const p = new ScriptedPeer();
  const listener = p.engine.listen(80);
  p.deliver({ op: OP.REQUEST, srcPort: 5000, dstPort: 80 });
  const [response] = p.pump();
  assertEquals(opName(response!.h.op), "RESPONSE");
  assertEquals(
    [
      response!.h.srcCid,
      response!.h.dstCid,
      response!.h.srcPort,
      response!.h.dstPort,
    ],
    [LOCAL_CID, PEER_CID, 80, 5000],
  );
  assertEquals(
    response!.h.bufAlloc,
    p.engine.initialBufAlloc,
    "every packet carries buf_alloc, the starting window at first",
  );
  const conn = await listener.accept();
  assertEquals([conn.localPort, conn.peerPort, conn.state], [
    80,
    5000,
    "established",
  ]);
  listener.close();
  p.engine.close();
});

Deno.test("engine answers a REQUEST to a port nobody listens on with RST", () => {
  const p = new ScriptedPeer();
  p.deliver({ op: OP.REQUEST, srcPort: 5000, dstPort: 81 });
  const [rst] = p.pump();
  assertEquals(opName(rst!.h.op), "RST");
  assertEquals([rst!.h.srcPort, rst!.h.dstPort], [81, 5000]);
  assertEquals(p.engine.connectionCount, 0);
});

Deno.test("engine connects out with REQUEST and is established by RESPONSE", async () => {
  const p = new ScriptedPeer();
  const pending = p.engine.connect(22);
  const [req] = p.pump();
  assertEquals(opName(req!.h.op), "REQUEST");
  assertEquals(req!.h.dstPort, 22);
  assert(req!.h.srcPort >= 2 ** 30, "an ephemeral port from [2^30, 2^31)");
  p.deliver({ op: OP.RESPONSE, srcPort: 22, dstPort: req!.h.srcPort });
  const conn = await pending;
  assertEquals(conn.state, "established");
  p.engine.close();
});

Deno.test("connect() fails with ECONNREFUSED when the peer answers RST", async () => {
  const p = new ScriptedPeer();
  const pending = p.engine.connect(22);
  const [req] = p.pump();
  p.deliver({ op: OP.RST, srcPort: 22, dstPort: req!.h.srcPort });
  const err = await assertRejects(() => pending, VsockError);
  assertEquals(err.code, "ECONNREFUSED");
  assertEquals(p.pump(), [], "no RST in reply to an RST");
  assertEquals(p.engine.connectionCount, 0);
});

Deno.test("connect() fails with ETIMEDOUT and resets when no RESPONSE comes", async () => {
  const p = new ScriptedPeer({ connectTimeoutMs: 20 });
  const pending = p.engine.connect(22);
  p.pump();
  const err = await assertRejects(() => pending, VsockError);
  assertEquals(err.code, "ETIMEDOUT");
  assertEquals(
    p.pumpOps(),
    ["RST"],
    "the half-open connection is reset at the peer too",
  );
});

Deno.test("a non-RESPONSE answer to a REQUEST resets the connection (EPROTO)", async () => {
  const p = new ScriptedPeer();
  const pending = p.engine.connect(22);
  const [req] = p.pump();
  p.deliver(
    { op: OP.RW, srcPort: 22, dstPort: req!.h.srcPort },
    new Uint8Array(3),
  );
  const err = await assertRejects(() => pending, VsockError);
  assertEquals(err.code, "EPROTO");
  assertEquals(p.pumpOps(), ["RST"]);
});

Deno.test("engine refuses a connection beyond the listener's backlog", () => {
  const p = new ScriptedPeer();
  const listener = p.engine.listen(80, { backlog: 2 });
  for (const port of [1, 2, 3]) {
    p.deliver({ op: OP.REQUEST, srcPort: port, dstPort: 80 });
  }
  assertEquals(p.pumpOps().sort(), ["RESPONSE", "RESPONSE", "RST"]);
  listener.close();
  p.engine.close();
});

Deno.test("engine refuses a connection beyond its connection limit", () => {
  const p = new ScriptedPeer({ maxConnections: 1 });
  const listener = p.engine.listen(80);
  p.deliver({ op: OP.REQUEST, srcPort: 1, dstPort: 80 });
  p.deliver({ op: OP.REQUEST, srcPort: 2, dstPort: 80 });
  assertEquals(p.pumpOps(), ["RST", "RESPONSE"]);
  assertEquals(p.engine.stats.refused["connection limit of N reached"], 1);
  listener.close();
  p.engine.close();
});

Deno.test("a listener refuses REQUESTs of the other socket type", () => {
  const p = new ScriptedPeer();
  const listener = p.engine.listen(80, { type: "seqpacket" });
  p.deliver({ op: OP.REQUEST, srcPort: 1, dstPort: 80, type: TYPE.STREAM });
  assertEquals(p.pumpOps(), ["RST"]);
  listener.close();
});

Deno.test("closing a listener resets connections nobody accepted", () => {
  const p = new ScriptedPeer();
  const listener = p.engine.listen(80);
  p.deliver({ op: OP.REQUEST, srcPort: 1, dstPort: 80 });
  p.pump();
  listener.close();
  assertEquals(p.pumpOps(), ["RST"]);
  assertEquals(p.engine.connectionCount, 0);
});

Deno.test("listen() refuses a port that is already listened on", () => {
  const p = new ScriptedPeer();
  const l = p.engine.listen(80);
  const err = (() => {
    try {
      p.engine.listen(80);
    } catch (e) {
      return e as VsockError;
    }
  })();
  assertEquals(err?.code, "EADDRINUSE");
  l.close();
});

Deno.test("connect() refuses while no transport is up", async () => {
  const p = new ScriptedPeer();
  p.engine.deactivate("test");
  const err = await assertRejects(() => p.engine.connect(80), VsockError);
  assertEquals(err.code, "ENOTCONN");
});

Deno.test("ephemeral ports of concurrent connections to one peer port are distinct", async () => {
  const p = new ScriptedPeer();
  const pending = [
    p.engine.connect(9),
    p.engine.connect(9),
    p.engine.connect(9),
  ];
  const ports = p.pump().map((s) => s.h.srcPort);
  assertEquals(new Set(ports).size, 3);
  for (const port of ports) {
    p.deliver({ op: OP.RESPONSE, srcPort: 9, dstPort: port });
  }
  await Promise.all(pending);
  p.engine.close();
  await tick();
});
