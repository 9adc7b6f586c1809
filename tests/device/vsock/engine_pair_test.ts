/**
 * Two engines over a real transport in one process: the host (device role)
 * and the guest (driver role).
 */
import { assert, assertEquals, assertRejects } from "../../../dev_deps.ts";
import { VsockError } from "../../../device/vsock/errors.ts";
import { VsockMessage } from "../../../device/vsock/vsock_message.ts";
import { DeviceTransport } from "../../../device/transport/device_transport.ts";
import { DeviceRunner } from "../../../device/transport/device_runner.ts";
import { DeviceEnginePort } from "../../../device/vsock/transport_ports.ts";
import { VsockEngine } from "../../../device/vsock/engine.ts";
import {
  enginePair,
  GUEST_CID,
  readAll,
  writeAll,
} from "../../_support/engine_pair.ts";
import { Prng } from "../../_support/prng.ts";

Deno.test("the host connects to a guest listener and bytes cross both ways", async () => {
  const p = await enginePair();
  try {
    const listener = p.guest.listen(80);
    const up = new Prng(1).bytes(300_000);
    const down = new Prng(2).bytes(200_000);
    const server = (async () => {
      const c = await listener.accept();
      const [got] = await Promise.all([
        readAll(c.readable),
        writeAll(c.writable, down),
      ]);
      return got;
    })();
    const c = await p.host.connect(80);
    assertEquals([c.peerCid, c.peerPort], [GUEST_CID, 80]);
    const [got] = await Promise.all([
      readAll(c.readable),
      writeAll(c.writable, up),
    ]);
    assertEquals(got, down);
    assertEquals(await server, up);
    assertEquals((await c.closed).reason, "closed");
    listener.close();
  } finally {
    await p.stop();
  }
});

Deno.test("the guest connects to a host listener", async () => {
  const p = await enginePair();
  try {
    const listener = p.host.listen(9000);
    const accepted = listener.accept();
    const c = await p.guest.connect(9000);
    const s = await accepted;
    assertEquals([s.peerCid, s.peerPort], [GUEST_CID, c.localPort]);
    await writeAll(c.writable, new Uint8Array([1, 2, 3]));
    assertEquals([...await readAll(s.readable)], [1, 2, 3]);
    listener.close();
  } finally {
    await p.stop();
  }
});

Deno.test("connecting to a port nobody listens on is refused, both ways", async () => {
  const p = await enginePair();
  try {
    assertEquals(
      (await assertRejects(() => p.host.connect(81), VsockError)).code,
      "ECONNREFUSED",
    );
    assertEquals(
      (await assertRejects(() => p.guest.connect(81), VsockError)).code,
      "ECONNREFUSED",
    );
  } finally {
    await p.stop();
  }
});

Deno.test("a slow reader holds the sender at its buf_alloc until it reads", async () => {
  const p = await enginePair({ guest: { bufAlloc: 64 * 1024 } });
  try {
    const listener = p.guest.listen(80);
    const accepted = listener.accept();
    const c = await p.host.connect(80);
    const s = await accepted;
    const data = new Prng(3).bytes(1 << 20);
    const writing = writeAll(c.writable, data, 16384);
    await new Promise((r) => setTimeout(r, 100));
    assert(s.unreadBytes <= 64 * 1024, `guest buffers ${s.unreadBytes}`);
    assert(s.unreadBytes > 0, "some data arrived");
    assert(c.unsentBytes > 0 || c.peerCredit === 0, "the sender is held back");
    assertEquals(
      await readAll(s.readable),
      data,
      "reading releases the rest, in order",
    );
    await writing;
    listener.close();
  } finally {
    await p.stop();
  }
});

Deno.test("SEQPACKET message boundaries and EOR survive end to end", async () => {
  const p = await enginePair();
  try {
    const listener = p.guest.listen(7, { type: "seqpacket" });
    const accepted = listener.accept();
    const c = await p.host.connect(7, { type: "seqpacket" });
    const s = await accepted;
    const sizes = [0, 1, 4096, 100_000, 7];
    const w = c.writable.getWriter();
    for (const [i, n] of sizes.entries()) {
      await w.write(VsockMessage.copyOf(new Prng(i).bytes(n), i % 2 === 1));
    }
    await w.close();
    const got: Array<[number, boolean]> = [];
    for await (const m of s.readable) {
      got.push([m.length, (m as VsockMessage).eor]);
    }
    assertEquals(got, sizes.map((n, i) => [n, i % 2 === 1]));
    listener.close();
  } finally {
    await p.stop();
  }
});

Deno.test("a device restart mid-transfer resets the guest's connections and its listeners accept again", async () => {
  const p = await enginePair();
  let runner2: DeviceRunner | null = null;
  try {
    const listener = p.guest.listen(80);
    const accepted = listener.accept();
    const c = await p.host.connect(80);
    const s = await accepted;
    const writing = writeAll(c.writable, new Prng(4).bytes(8 << 20), 65536)
      .catch((e) => e);
    await s.readable.getReader().read(); // the transfer is under way

    // The device process dies; a new one attaches to the same region.
    await p.deviceRunner.stop();
    const host2 = new VsockEngine();
    const device2 = DeviceTransport.attach(p.region, { guestCid: GUEST_CID });
    runner2 = new DeviceRunner(device2, new DeviceEnginePort(host2, GUEST_CID));
    host2.setKick(() => runner2!.kick());
    runner2.run();

    const info = await s.closed;
    assertEquals(info.reason, "ENETRESET");
    p.host.close(); // the old host engine's side is gone with its process
    assert(
      (await writing) instanceof Error,
      "the old sender sees its connection end",
    );

    const accepted2 = listener.accept();
    const deadline = Date.now() + 5000;
    while (!host2.active) {
      if (Date.now() > deadline) {
        throw new Error("the new device never saw the driver");
      }
      await new Promise((r) => setTimeout(r, 5));
    }
    const c2 = await host2.connect(80);
    const s2 = await accepted2;
    await writeAll(c2.writable, new Uint8Array([42]));
    assertEquals([...await readAll(s2.readable)], [42]);
    listener.close();
    host2.close();
  } finally {
    await runner2?.stop();
    await p.stop();
  }
});

Deno.test("both ends closing at the same moment end at once, and the crossing RSTs raise no warning", async () => {
  const warnings: string[] = [];
  const log = (level: string, msg: string) => {
    if (level === "warn" || level === "error") warnings.push(msg);
  };
  const p = await enginePair({
    host: { closeTimeoutMs: 5_000, log },
    guest: { closeTimeoutMs: 5_000, log },
  });
  try {
    const listener = p.guest.listen(80);
    const accepted = listener.accept();
    const c = await p.host.connect(80);
    const g = await accepted;
    // Neither side has seen the other's SHUTDOWN when it sends its own.
    c.close();
    g.close();
    const [hostEnd, guestEnd] = await Promise.all([c.closed, g.closed]);
    assertEquals([hostEnd.reason, guestEnd.reason], ["closed", "closed"]);
    // Without the fix each waited out its close timeout and sent RST then.
    assertEquals([hostEnd.message, guestEnd.message], ["closed", "closed"]);
    listener.close();
  } finally {
    await p.stop();
  }
  assertEquals(warnings, []);
});
