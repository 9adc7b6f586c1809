import "../../_support/ffi.ts";
import {
  assert,
  assertEquals,
  assertMatch,
  assertRejects,
  assertThrows,
} from "../../../dev_deps.ts";
import { EventFd } from "../../../device/notify/eventfd.ts";
import { IvshmemServer } from "../../../device/notify/ivshmem_server.ts";
import { listenUnix } from "../../../device/notify/_unix_socket.ts";
import { cString, libc, O_CLOEXEC, O_RDWR } from "../../../device/shm/_libc.ts";
import { fdSize, ProtocolClient, withMapping } from "./_protocol_client.ts";
import {
  exists,
  openFdCount,
  shmPath,
  socketPath,
  startServer,
} from "./_server_fixture.ts";

function fdTarget(fd: number): string {
  return Deno.readLinkSync(`/proc/self/fd/${fd}`);
}

Deno.test("IvshmemServer sends version, id, shm fd and peer eventfds in protocol order", async () => {
  await using f = await startServer("order", { vectors: 3 });
  using client = ProtocolClient.connect(f.path);
  const hs = await client.handshake(3, 1);
  assertEquals(hs.version, 0n);
  assertEquals(hs.id, 1);
  assertEquals(fdTarget(hs.shmFd), shmPath("order"));
  assertEquals(hs.order, [0, 1], "peer 0 first, the client's own id last");
  for (const fds of hs.peers.values()) {
    assertEquals(fds.length, 3);
    for (const fd of fds) assertEquals(fdTarget(fd), "anon_inode:[eventfd]");
  }
  assert(await client.quietFor(100), "nothing follows the handshake");
  assertEquals(await f.events.next("connect"), { type: "connect", id: 1 });
  assertEquals(f.server.clients, [1]);
});

Deno.test("IvshmemServer passes an shm fd whose size and memory are the region's", async () => {
  await using f = await startServer("shm", { vectors: 1, size: 1 << 16 });
  using client = ProtocolClient.connect(f.path);
  const hs = await client.handshake(1, 1);
  assertEquals(fdSize(hs.shmFd), 1 << 16);
  f.shm.region.store32(4096, 0xfeedf00d);
  withMapping(hs.shmFd, 1 << 16, (bytes) => {
    assertEquals(new DataView(bytes.buffer).getUint32(4096, true), 0xfeedf00d);
    bytes.set([1, 2, 3], 65533);
  });
  assertEquals([...f.shm.region.span(65533, 3)], [1, 2, 3]);
});

Deno.test("Signalling a received peer-0 eventfd for vector v wakes deviceVectors[v].wait()", async () => {
  await using f = await startServer("doorbell", { vectors: 3 });
  using client = ProtocolClient.connect(f.path);
  const hs = await client.handshake(3, 1);
  const peer0 = hs.peers.get(0)!;
  for (let v = 0; v < 3; v++) {
    await using ring = EventFd.fromFd(client.take(peer0[v]!));
    const woke = f.server.deviceVectors[v]!.wait(2000);
    ring.signal();
    assert(await woke, `vector ${v} woke`);
    f.server.deviceVectors.forEach((e, i) =>
      assertEquals(e.drain(), i === v ? 1n : 0n, `vector ${i}`)
    );
  }
});

Deno.test("IvshmemServer.ring(id, v) signals the client's own eventfd for v", async () => {
  await using f = await startServer("ring", { vectors: 2 });
  using client = ProtocolClient.connect(f.path);
  const hs = await client.handshake(2, 1);
  const own = hs.peers.get(hs.id)!;
  await using v0 = EventFd.fromFd(client.take(own[0]!));
  await using v1 = EventFd.fromFd(client.take(own[1]!));
  const woke = v1.wait(2000);
  assert(f.server.ring(hs.id, 1));
  assert(await woke);
  assertEquals(v1.drain(), 1n);
  assertEquals(v0.drain(), 0n);
  assertEquals(f.server.ring(99, 0), false, "no such client");
  assertThrows(() => f.server.ring(hs.id, 2), RangeError, "received 2");
});

Deno.test("IvshmemServer announces a new client to earlier ones, and its disconnect without an fd", async () => {
  await using f = await startServer("announce", { vectors: 2 });
  using a = ProtocolClient.connect(f.path);
  const ha = await a.handshake(2, 1);
  const b = ProtocolClient.connect(f.path);
  try {
    const hb = await b.handshake(2, 2);
    assertEquals([ha.id, hb.id], [1, 2]);
    assertEquals(hb.order, [0, 1, 2]);
    const announced = [await a.next(), await a.next()];
    assertEquals(announced.map((m) => [m.value, m.fds.length]), [
      [2n, 1],
      [2n, 1],
    ]);
    // A's eventfd for B's vector 1 and B's own vector 1 are the same one.
    await using aToB = EventFd.fromFd(a.take(announced[1]!.fds[0]!));
    await using bOwn = EventFd.fromFd(b.take(hb.peers.get(2)![1]!));
    aToB.signal();
    assertEquals(bOwn.drain(), 1n);
  } finally {
    b.close();
  }
  const gone = await a.next();
  assertEquals([gone.value, gone.fds], [2n, []]);
  assertEquals(await f.events.next("disconnect"), {
    type: "disconnect",
    id: 2,
  });
  assertEquals(f.server.clients, [1]);
});

Deno.test("IvshmemServer refuses a client beyond maxClients with id -1 and says so in a log event", async () => {
  await using f = await startServer("full", { vectors: 1, maxClients: 1 });
  using a = ProtocolClient.connect(f.path);
  await a.handshake(1, 1);
  using b = ProtocolClient.connect(f.path);
  const [version, id] = [await b.next(), await b.next()];
  assertEquals([version.value, id.value, id.fds], [0n, -1n, []]);
  assert(await b.closedByServer(), "the extra client gets an invalid id");
  const log = await f.events.next("log");
  assert(log.type === "log");
  assertMatch(log.message, /already serving 1 clients \(maxClients 1\)/);
  assertEquals(f.server.clients, [1]);
  assert(await a.quietFor(50), "the served client hears nothing of it");
});

Deno.test("IvshmemServer gives a reconnecting client a fresh id", async () => {
  await using f = await startServer("reconnect", { vectors: 1 });
  const first = ProtocolClient.connect(f.path);
  assertEquals((await first.handshake(1, 1)).id, 1);
  first.close();
  await f.events.next("disconnect");
  using again = ProtocolClient.connect(f.path);
  const hs = await again.handshake(1, 1);
  assertEquals(hs.id, 2);
  assertEquals(hs.order, [0, 2], "the departed id is not offered as a peer");
});

Deno.test("IvshmemServer drops a client that sends bytes and keeps serving the others", async () => {
  await using f = await startServer("chatty", { vectors: 1 });
  using good = ProtocolClient.connect(f.path);
  await good.handshake(1, 1);
  using bad = ProtocolClient.connect(f.path);
  const hb = await bad.handshake(1, 2);
  await good.next(); // bad's announcement
  libc().write(bad.socket, new Uint8Array([1, 2, 3]), 3n);
  assert(await bad.closedByServer(), "the talking client is dropped");
  const log = await f.events.next("log");
  assert(log.type === "log");
  assertMatch(
    log.message,
    /Dropped ivshmem client 2: it sent 3 unexpected bytes/,
  );
  const gone = await good.next();
  assertEquals([gone.value, gone.fds], [BigInt(hb.id), []]);
  assertEquals(f.server.clients, [1]);
});

Deno.test("IvshmemServer queues a handshake larger than the socket buffer until the client reads", async () => {
  // 64 vectors: the fifth client's handshake alone is 3 + 64 * 5 messages,
  // each an skb with a descriptor, more than a unix socket buffer holds.
  await using f = await startServer("queue", { vectors: 64 });
  const clients: ProtocolClient[] = [];
  try {
    for (let i = 0; i < 5; i++) {
      clients.push(ProtocolClient.connect(f.path));
      await f.events.next("connect");
    }
    for (const [i, c] of clients.entries()) {
      const hs = await c.handshake(64, i + 1);
      assertEquals(hs.id, i + 1);
      assertEquals(hs.order, [...Array(i + 2).keys()]);
      for (let later = i + 2; later <= 5; later++) {
        for (let v = 0; v < 64; v++) {
          const m = await c.next();
          assertEquals([m.value, m.fds.length], [BigInt(later), 1]);
        }
      }
      assert(await c.quietFor(20));
    }
  } finally {
    for (const c of clients) c.close();
  }
});

Deno.test("IvshmemServer.listen() rejects vectors outside 1..64 with a RangeError naming the value", async () => {
  const path = socketPath("vectors");
  for (const vectors of [0, 65, 1.5]) {
    await assertRejects(
      () => IvshmemServer.listen({ path, shmFd: 0, vectors }),
      RangeError,
      `from 1 to 64, received ${vectors}`,
    );
  }
  await assertRejects(
    () => IvshmemServer.listen({ path, shmFd: 0, vectors: 1, maxClients: 0 }),
    RangeError,
    "maxClients must be an integer from 1 to 65535, received 0",
  );
  assert(!exists(path));
});

Deno.test("IvshmemServer.listen() rejects shared memory whose size is not a power of two", async () => {
  const file = shmPath("oddsize");
  await Deno.writeFile(file, new Uint8Array(5000));
  const fd = libc().open(cString(file), O_RDWR | O_CLOEXEC, 0);
  try {
    await assertRejects(
      () =>
        IvshmemServer.listen({
          path: socketPath("oddsize"),
          shmFd: fd,
          vectors: 1,
        }),
      RangeError,
      "received 5000",
    );
  } finally {
    libc().close(fd);
    await Deno.remove(file);
  }
  assert(!exists(socketPath("oddsize")));
});

Deno.test("IvshmemServer.listen() replaces a stale socket file", async () => {
  const path = socketPath("stale");
  // A bound socket whose owner went away without removing the file.
  libc().close(listenUnix(path, 1));
  assert(Deno.lstatSync(path).isSocket);
  await using f = await startServer("stale", { vectors: 1 });
  using client = ProtocolClient.connect(f.path);
  assertEquals((await client.handshake(1, 1)).id, 1);
});

Deno.test("IvshmemServer.listen() refuses a path that is in use or not a socket", async () => {
  await using f = await startServer("inuse", { vectors: 1 });
  await assertRejects(
    () => IvshmemServer.listen({ path: f.path, shmFd: f.shm.fd, vectors: 1 }),
    Error,
    "another server is listening there",
  );
  assert(exists(f.path), "the live server keeps its socket");
  const file = socketPath("plainfile");
  await Deno.writeTextFile(file, "not a socket");
  try {
    await assertRejects(
      () => IvshmemServer.listen({ path: file, shmFd: f.shm.fd, vectors: 1 }),
      Error,
      "it exists and is not a socket",
    );
  } finally {
    await Deno.remove(file);
  }
});

Deno.test("IvshmemServer.close() removes its socket file, closes every fd and ends pending waits", async () => {
  const path = socketPath("close");
  const shm = shmPath("close");
  const before = openFdCount();
  {
    await using f = await startServer("close", { vectors: 4 });
    using client = ProtocolClient.connect(f.path);
    await client.handshake(4, 1);
    const waiting = f.server.deviceVectors[2]!.wait(60_000);
    await f.server.close();
    assertEquals(await waiting, false);
    assert(!exists(path), "socket file removed");
    assert(await client.closedByServer(), "clients are disconnected");
    assertEquals(f.server.ring(1, 0), false);
    await f.server.close(); // idempotent
  }
  assert(!exists(shm));
  assertEquals(openFdCount(), before, "every descriptor closed");
});
