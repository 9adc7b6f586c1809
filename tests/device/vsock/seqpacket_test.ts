/**
 * SEQPACKET: message boundaries (EOM) and record ends (EOR).
 */
import { assertEquals, assertRejects } from "../../../dev_deps.ts";
import { OP, SEQ_F, TYPE } from "../../../device/packets/header.ts";
import { VsockMessage } from "../../../device/vsock/vsock_message.ts";
import { VsockError } from "../../../device/vsock/errors.ts";
import type { VsockConnection } from "../../../device/vsock/connection.ts";
import { ScriptedPeer, tick } from "../../_support/scripted_peer.ts";

const from = { srcPort: 5000, dstPort: 80, type: TYPE.SEQPACKET };

async function open(
  p: ScriptedPeer,
  bufAlloc = 65536,
): Promise<VsockConnection> {
  const listener = p.engine.listen(80, { type: "seqpacket" });
  p.deliver({ op: OP.REQUEST, ...from, bufAlloc });
  p.pump();
  const conn = await listener.accept();
  listener.close();
  return conn;
}

Deno.test("SEQPACKET reads return whole messages however they were split, with EOR", async () => {
  const p = new ScriptedPeer();
  const conn = await open(p);
  p.deliver({ op: OP.RW, ...from }, new Uint8Array([1, 2]));
  p.deliver({ op: OP.RW, ...from, flags: SEQ_F.EOM }, new Uint8Array([3]));
  p.deliver(
    { op: OP.RW, ...from, flags: SEQ_F.EOM | SEQ_F.EOR },
    new Uint8Array([4, 5]),
  );
  p.deliver({ op: OP.RW, ...from, flags: SEQ_F.EOM }, new Uint8Array(0)); // an empty message
  const reader = conn.readable.getReader();
  const messages: Array<[number[], boolean]> = [];
  for (let i = 0; i < 3; i++) {
    const m = (await reader.read()).value as VsockMessage;
    messages.push([[...m], m.eor]);
  }
  assertEquals(messages, [[[1, 2, 3], false], [[4, 5], true], [[], false]]);
  p.engine.close();
});

Deno.test("SEQPACKET writes send one message per chunk, EOM on its last packet and EOR when asked", async () => {
  const p = new ScriptedPeer();
  const conn = await open(p);
  p.room = 4; // force a message over several packets
  const w = conn.writable.getWriter();
  w.write(new Uint8Array([1, 2, 3, 4, 5, 6])).catch(() => {});
  w.write(VsockMessage.copyOf(new Uint8Array([7]), true)).catch(() => {});
  await tick();
  let sent = p.pump();
  await tick();
  sent = sent.concat(p.pump());
  assertEquals(sent.map((s) => [s.h.len, s.h.flags]), [[4, 0], [2, SEQ_F.EOM], [
    1,
    SEQ_F.EOM | SEQ_F.EOR,
  ]]);
  p.engine.close();
});

Deno.test("SEQPACKET refuses a message larger than the peer's buffer with EMSGSIZE", async () => {
  const p = new ScriptedPeer();
  const conn = await open(p, 1000);
  const err = await assertRejects(
    () => conn.writable.getWriter().write(new Uint8Array(1001)),
    VsockError,
  );
  assertEquals(err.code, "EMSGSIZE");
  p.engine.close();
});
