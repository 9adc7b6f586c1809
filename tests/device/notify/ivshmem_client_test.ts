import "../../_support/ffi.ts";
import {
  assert,
  assertEquals,
  assertRejects,
  assertThrows,
} from "../../../dev_deps.ts";
import { EventFd } from "../../../device/notify/eventfd.ts";
import {
  IvshmemAttachError,
  IvshmemClient,
  type IvshmemClientEvent,
} from "../../../device/notify/ivshmem_client.ts";
import {
  acceptUnix,
  listenUnix,
  sendMessage,
  SocketError,
} from "../../../device/notify/_unix_socket.ts";
import { mapFd, mapFile } from "../../../device/shm/shm_file.ts";
import {
  cString,
  libc,
  O_CLOEXEC,
  O_CREAT,
  O_RDWR,
} from "../../../device/shm/_libc.ts";
import {
  openFdCount,
  shmPath,
  socketPath,
  startServer,
} from "./_server_fixture.ts";

function fdTarget(fd: number): string {
  return Deno.readLinkSync(`/proc/self/fd/${fd}`);
}

/** Client events in arrival order, and a way to await one. */
class ClientEvents {
  readonly all: IvshmemClientEvent[] = [];
  readonly push = (e: IvshmemClientEvent): void => {
    this.all.push(e);
  };

  async next(
    test: (e: IvshmemClientEvent) => boolean,
    timeoutMs = 3000,
  ): Promise<IvshmemClientEvent> {
    const deadline = performance.now() + timeoutMs;
    while (performance.now() < deadline) {
      const found = this.all.find(test);
      if (found !== undefined) return found;
      await new Promise((r) => setTimeout(r, 10));
    }
    throw new Error(
      `No matching client event within ${timeoutMs} ms: ${
        JSON.stringify(this.all)
      }`,
    );
  }
}

Deno.test("IvshmemClient.connect() gets its id, peer 0's eventfds, its own and the server's shared memory", async () => {
  await using f = await startServer("client-hs", { vectors: 2 });
  await using client = await IvshmemClient.connect(f.path);
  assertEquals(client.id, 1);
  assertEquals(client.vectors.length, 2);
  assertEquals([...client.peers.keys()], [0]);
  assertEquals(client.peers.get(0)!.length, 2);
  for (const e of [...client.vectors, ...client.peers.get(0)!]) {
    assertEquals(fdTarget(e.fd), "anon_inode:[eventfd]");
  }
  assertEquals(fdTarget(client.shmFd), shmPath("client-hs"));
  assertEquals(f.server.clients, [1]);
});

Deno.test("mapFd() maps the shared memory an IvshmemClient received, which then owns the fd", async () => {
  await using f = await startServer("client-map", { vectors: 1 });
  await using client = await IvshmemClient.connect(f.path);
  const fd = client.takeShmFd();
  assertEquals(client.shmFd, -1);
  assertThrows(() => client.takeShmFd(), Error, "already taken");
  const shm = mapFd(fd, "ivshmem memory");
  try {
    assertEquals(shm.region.size, 65536);
    assertEquals(shm.path, "ivshmem memory");
    f.shm.region.store32(4096, 0xfeedf00d);
    assertEquals(shm.region.load32(4096), 0xfeedf00d);
    shm.region.store32(65532, 7);
    assertEquals(f.shm.region.load32(65532), 7);
  } finally {
    shm.close();
  }
  assertThrows(() => fdTarget(fd), Error, undefined, "the mapping closed it");
});

Deno.test("mapFd() rejects a descriptor whose size is not a power of two, and closes it", () => {
  const path = shmPath("mapfd-odd");
  const fd = libc().open(cString(path), O_RDWR | O_CREAT | O_CLOEXEC, 0o600);
  try {
    assert(fd >= 0);
    libc().ftruncate(fd, 5000n);
    assertThrows(() => mapFd(fd, "odd"), RangeError, "received 5000");
    assertThrows(() => fdTarget(fd), Error, undefined, "closed on failure");
    assertThrows(() => mapFd(-1, "none"), TypeError, "received -1");
  } finally {
    Deno.removeSync(path);
  }
});

Deno.test("IvshmemClient.ring(0, v) wakes deviceVectors[v], and IvshmemServer.ring(id, v) wakes client.vectors[v]", async () => {
  await using f = await startServer("client-ring", { vectors: 2 });
  await using client = await IvshmemClient.connect(f.path);
  for (let v = 0; v < 2; v++) {
    const woke = f.server.deviceVectors[v]!.wait(2000);
    assert(client.ring(0, v));
    assert(await woke, `device vector ${v} woke`);
    f.server.deviceVectors.forEach((e, i) =>
      assertEquals(e.drain(), i === v ? 1n : 0n, `device vector ${i}`)
    );
    const back = client.vectors[v]!.wait(2000);
    assert(f.server.ring(client.id, v));
    assert(await back, `client vector ${v} woke`);
    client.vectors.forEach((e, i) =>
      assertEquals(e.drain(), i === v ? 1n : 0n, `client vector ${i}`)
    );
  }
  assertEquals(client.ring(7, 0), false, "no such peer");
  assertThrows(() => client.ring(0, 2), RangeError, "received 2");
  await client.close();
  assertEquals(client.ring(0, 0), false, "closed");
});

Deno.test("IvshmemClient follows a peer arriving and leaving after its handshake", async () => {
  await using f = await startServer("client-peers", { vectors: 2 });
  const events = new ClientEvents();
  await using a = await IvshmemClient.connect(f.path, {
    onEvent: events.push,
  });
  const b = await IvshmemClient.connect(f.path);
  try {
    assertEquals([a.id, b.id], [1, 2]);
    assertEquals([...b.peers.keys()], [0, 1]);
    await events.next((e) => e.type === "connect" && e.id === 2);
    assertEquals(a.peers.get(2)?.length, 2);
    const woke = b.vectors[1]!.wait(2000);
    assert(a.ring(2, 1));
    assert(await woke);
    assertEquals(b.vectors[1]!.drain(), 1n);
  } finally {
    await b.close();
  }
  await events.next((e) => e.type === "disconnect" && e.id === 2);
  assertEquals([...a.peers.keys()], [0]);
  assertEquals(a.ring(2, 0), false);
  assertEquals(events.all.filter((e) => e.type === "log"), []);
});

Deno.test("IvshmemClient reports a server that goes away and keeps its eventfds", async () => {
  const f = await startServer("client-gone", { vectors: 1 });
  const events = new ClientEvents();
  let client: IvshmemClient | undefined;
  try {
    client = await IvshmemClient.connect(f.path, { onEvent: events.push });
  } finally {
    await f[Symbol.asyncDispose]();
  }
  try {
    await events.next((e) => e.type === "closed");
    assert(client.serverGone);
    assert(client.ring(0, 0), "our duplicate of peer 0's eventfd still works");
  } finally {
    await client.close();
  }
});

Deno.test("IvshmemClient.close() closes the socket and every descriptor it received", async () => {
  await using f = await startServer("client-fds", { vectors: 3 });
  const before = openFdCount();
  const client = await IvshmemClient.connect(f.path);
  assert(openFdCount() > before + 6);
  await client.close();
  await client.close();
  await f.events.next("disconnect");
  assertEquals(openFdCount(), before, "every descriptor closed");
});

Deno.test("IvshmemClient.connect() checks a given vector count against the server's", async () => {
  await using f = await startServer("client-count", { vectors: 2 });
  await using ok = await IvshmemClient.connect(f.path, { vectors: 2 });
  assertEquals(ok.vectors.length, 2);
  await assertRejects(
    () => IvshmemClient.connect(f.path, { vectors: 3 }),
    IvshmemAttachError,
    "expected 3 eventfds for peer 0, received 2",
  );
  await assertRejects(
    () => IvshmemClient.connect(f.path, { vectors: 1 }),
    IvshmemAttachError,
    "expected 1 eventfds for peer 0, received more than 1",
  );
  for (const vectors of [0, 65, 1.5]) {
    await assertRejects(
      () => IvshmemClient.connect(f.path, { vectors }),
      RangeError,
      `received ${vectors}`,
    );
  }
});

Deno.test("IvshmemClient.connect() reports a full server's refusal", async () => {
  await using f = await startServer("client-full", {
    vectors: 1,
    maxClients: 1,
  });
  await using first = await IvshmemClient.connect(f.path);
  assertEquals(first.id, 1);
  await assertRejects(
    () => IvshmemClient.connect(f.path),
    IvshmemAttachError,
    "refused the connection (id -1)",
  );
});

Deno.test("IvshmemClient.connect() fails clearly when nobody listens", async () => {
  const err = await assertRejects(
    () => IvshmemClient.connect(socketPath("client-nobody")),
    IvshmemAttachError,
    "Cannot connect to the ivshmem server at",
  );
  assert(err.cause instanceof SocketError, "the socket error is the cause");
});

// A fake server, to send what ivsock's server never would.

/** What a fake server script may pass: the memory and a few eventfds. */
interface Kit {
  /** Sends one message, with `fd` attached unless it is -1. */
  send(value: number, fd?: number): void;
  /** A 64 KiB /dev/shm file. */
  shm: number;
  /** A 5000-byte file. */
  oddShm: number;
  /** Eventfds, one per id the script may use. */
  eventFd: (n: number) => number;
  /** Hangs up. */
  hangUp(): void;
}

/**
 * Runs `script` as the server side of one connection and returns what
 * connect() did. Checks no descriptor leaked from the client either way.
 */
async function fakeServer(
  name: string,
  script: (kit: Kit) => void,
  options: { vectors?: number; timeoutMs?: number } = {},
): Promise<IvshmemClient | Error> {
  const path = socketPath(`fake-${name}`);
  const shm = mapFile(shmPath(`fake-${name}`), {
    mode: "create",
    size: 65536,
  });
  const oddPath = shmPath(`fake-odd-${name}`);
  const oddShm = libc().open(
    cString(oddPath),
    O_RDWR | O_CREAT | O_CLOEXEC,
    0o600,
  );
  libc().ftruncate(oddShm, 5000n);
  const eventFds = Array.from({ length: 8 }, () => EventFd.create());
  const listenFd = listenUnix(path, 1);
  let socket = -1;
  const before = openFdCount();
  try {
    const connecting = IvshmemClient.connect(path, {
      timeoutMs: options.timeoutMs ?? 2000,
      ...(options.vectors === undefined ? {} : { vectors: options.vectors }),
    });
    socket = acceptUnix(listenFd);
    assert(socket >= 0, "the client connected synchronously");
    script({
      send: (value, fd = -1) => assert(sendMessage(socket, BigInt(value), fd)),
      shm: shm.fd,
      oddShm,
      eventFd: (n) => eventFds[n]!.fd,
      hangUp: () => {
        libc().close(socket);
        socket = -1;
      },
    });
    const result = await connecting.catch((err: Error) => err);
    if (result instanceof Error) {
      if (socket >= 0) libc().close(socket);
      socket = -1;
      assertEquals(openFdCount(), before, "the client closed all it received");
    }
    return result;
  } finally {
    if (socket >= 0) libc().close(socket);
    libc().close(listenFd);
    Deno.removeSync(path);
    libc().close(oddShm);
    Deno.removeSync(oddPath);
    shm.close({ remove: true });
    await Promise.all(eventFds.map((e) => e.close()));
  }
}

/** Version, id and memory as ivsock's server sends them. */
function preamble(kit: Kit, id = 1): void {
  kit.send(0);
  kit.send(id);
  kit.send(-1, kit.shm);
}

const BAD_SERVERS: Array<
  { does: string; script: (kit: Kit) => void; says: string; vectors?: number }
> = [
  {
    does: "speaks protocol version 1",
    script: (k) => k.send(1),
    says: "expected protocol version 0, received 1",
  },
  {
    does: "attaches a descriptor to the version",
    script: (k) => k.send(0, k.eventFd(0)),
    says:
      "expected the protocol version without a descriptor, received 0 with 1",
  },
  {
    does: "gives an id above 65535",
    script: (k) => {
      k.send(0);
      k.send(65536);
    },
    says: "expected our id from 0 to 65535, received 65536",
  },
  {
    does: "sends no shared-memory descriptor",
    script: (k) => {
      k.send(0);
      k.send(1);
      k.send(-1);
    },
    says: "expected -1 with the shared-memory descriptor, received -1 with 0",
  },
  {
    does: "sends shared memory of 5000 bytes",
    script: (k) => {
      k.send(0);
      k.send(1);
      k.send(-1, k.oddShm);
    },
    says: "power of two from 4 KiB to 2 GiB, received 5000 bytes",
  },
  {
    does: "passes a regular file as a peer's eventfd",
    script: (k) => {
      preamble(k);
      k.send(0, k.shm);
    },
    says: "expected an eventfd, received /dev/shm/",
  },
  {
    does: "announces a peer without a descriptor during the handshake",
    script: (k) => {
      preamble(k);
      k.send(0);
    },
    says: "received 0 with 0 descriptors",
  },
  {
    does: "gives a peer id of -2",
    script: (k) => {
      preamble(k);
      k.send(-2, k.eventFd(0));
    },
    says: "from 0 to 65535, received id -2",
  },
  {
    does: "gives one peer fewer eventfds than another",
    script: (k) => {
      preamble(k, 1);
      k.send(0, k.eventFd(0));
      k.send(0, k.eventFd(1));
      k.send(2, k.eventFd(2));
      k.send(1, k.eventFd(3));
      k.send(1, k.eventFd(4));
    },
    says: "expected 2 eventfds for peer 2, received 1",
  },
  {
    does: "splits a peer's eventfds",
    script: (k) => {
      preamble(k, 1);
      k.send(0, k.eventFd(0));
      k.send(2, k.eventFd(1));
      k.send(0, k.eventFd(2));
    },
    says: "peer 0's eventfds arrived in pieces",
    vectors: 1,
  },
  {
    does: "sends the client's own eventfds first without a vector count",
    script: (k) => {
      preamble(k, 1);
      k.send(1, k.eventFd(0));
    },
    says: "pass options.vectors",
  },
  {
    does: "hangs up mid-handshake",
    script: (k) => {
      preamble(k);
      k.send(0, k.eventFd(0));
      k.hangUp();
    },
    says: "the server closed the connection after 4 messages",
  },
  {
    does: "stops sending mid-handshake",
    script: (k) => {
      preamble(k);
      k.send(0, k.eventFd(0));
    },
    says: "no complete handshake within 300 ms (4 messages received)",
  },
];

for (const bad of BAD_SERVERS) {
  Deno.test(`IvshmemClient.connect() rejects a server that ${bad.does}, closing what it received`, async () => {
    const result = await fakeServer(
      bad.does.replaceAll(/\W+/g, "-"),
      bad.script,
      {
        timeoutMs: 300,
        ...(bad.vectors === undefined ? {} : { vectors: bad.vectors }),
      },
    );
    assert(result instanceof IvshmemAttachError, `rejected: ${result}`);
    assert(
      result.message.includes(bad.says),
      `message "${result.message}" includes "${bad.says}"`,
    );
  });
}

Deno.test("IvshmemClient.connect() accepts a server where it is the first peer (id 0) when told the vector count", async () => {
  const client = await fakeServer("first", (k) => {
    preamble(k, 0);
    k.send(0, k.eventFd(0));
    k.send(0, k.eventFd(1));
  }, { vectors: 2 });
  assert(client instanceof IvshmemClient, `connected: ${client}`);
  try {
    assertEquals(client.id, 0);
    assertEquals(client.vectors.length, 2);
    assertEquals(client.peers.size, 0);
  } finally {
    await client.close();
  }
});
