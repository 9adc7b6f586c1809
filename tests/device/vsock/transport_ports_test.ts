/**
 * The engine's adapters to the transport runners.
 */
import { assertEquals } from "../../../dev_deps.ts";
import { OP } from "../../../device/packets/header.ts";
import { InboundPacket } from "../../../device/packets/inbound_packet.ts";
import { VsockEngine } from "../../../device/vsock/engine.ts";
import { DriverEnginePort } from "../../../device/vsock/transport_ports.ts";
import type { DriverQueues } from "../../../device/transport/driver_transport.ts";
import { EVENT_ID } from "../../../device/transport/event_queue.ts";
import { featureBit } from "../../../device/virtio.ts";

/** Just enough of DriverQueues for the port: it only reads these. */
function fakeQueues(guestCid: number): DriverQueues {
  const sent: number[] = [];
  return {
    guestCid,
    features: featureBit(0) | featureBit(1),
    driverTx: {
      room: () => 65536,
      send: (h: { op: number }) => {
        sent.push(h.op);
        return true;
      },
    },
  } as unknown as DriverQueues;
}

Deno.test("TRANSPORT_RESET ends the guest's connections, keeps its listeners and re-reads guest_cid", async () => {
  const engine = new VsockEngine();
  const port = new DriverEnginePort(engine);
  port.activated(fakeQueues(3));
  const listener = engine.listen(80);
  const packet = new InboundPacket();
  Object.assign(packet.header, {
    srcCid: 2,
    dstCid: 3,
    srcPort: 9,
    dstPort: 80,
    type: 1,
    op: OP.REQUEST,
  });
  engine.receive(packet);
  const conn = await listener.accept();

  port.event(EVENT_ID.TRANSPORT_RESET);
  assertEquals((await conn.closed).reason, "ENETRESET");
  assertEquals(engine.active, true, "the transport itself stays up");
  assertEquals(engine.localCid, 3);

  engine.receive(packet); // the listener still answers
  assertEquals((await listener.accept()).peerPort, 9);
  listener.close();
  engine.close();
});

Deno.test("an unknown event id changes nothing", () => {
  const engine = new VsockEngine();
  const port = new DriverEnginePort(engine);
  port.activated(fakeQueues(3));
  port.event(7);
  assertEquals(engine.active, true);
  engine.close();
});
