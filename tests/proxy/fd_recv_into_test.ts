/**
 * `FdConn.recvInto()` and `whenReadable()`: reading a socket straight into
 * ranges of a region, as the rings' sinks pull it.
 */
import "../_support/ffi.ts";
import {
  assert,
  assertEquals,
  assertRejects,
  assertThrows,
} from "../../dev_deps.ts";
import { IoPoller } from "../../device/notify/io_poller.ts";
import { Region } from "../../device/shm/region.ts";
import { SegmentList } from "../../device/virtqueue/segments.ts";
import { connectTcp, FdConn, FdListener } from "../../proxy/fd_socket.ts";
import { pumpIo } from "../_support/io_pump.ts";
import { within } from "../_support/within.ts";

const WAIT_MS = 5000;

async function withPair(
  fn: (conn: FdConn, peer: Deno.TcpConn, io: IoPoller) => Promise<void>,
): Promise<void> {
  const io = new IoPoller();
  const pump = pumpIo(io);
  let peer: Deno.TcpConn | undefined;
  let conn: FdConn | undefined;
  try {
    using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const accepted = listener.accept();
    conn = await connectTcp(io, "127.0.0.1", listener.addr.port, WAIT_MS);
    peer = await within(accepted, WAIT_MS, "accept");
    await within(fn(conn, peer, io), 20_000, "test body");
  } finally {
    try {
      peer?.close();
    } catch { /* closed by the test */ }
    try {
      conn?.close();
    } catch { /* closed by the test */ }
    pump.stop();
    io.close();
  }
}

function ranges(...pairs: Array<[number, number]>): SegmentList {
  const s = new SegmentList();
  for (const [o, l] of pairs) s.push(o, l);
  return s;
}

async function writeAll(c: Deno.Conn, data: Uint8Array): Promise<void> {
  for (let at = 0; at < data.length;) at += await c.write(data.subarray(at));
}

/** Reads until `want` bytes landed in `dest`, waiting for readiness between. */
async function recvAll(
  conn: FdConn,
  region: Region,
  dest: SegmentList,
  want: number,
): Promise<number> {
  let got = 0;
  while (got < want) {
    const rest = new SegmentList();
    let skip = got;
    for (let i = 0; i < dest.count; i++) {
      const len = dest.lengths[i]!;
      if (skip >= len) {
        skip -= len;
        continue;
      }
      rest.push(dest.offsets[i]! + skip, len - skip);
      skip = 0;
    }
    const n = conn.recvInto(region, rest);
    if (n === null) break;
    if (n === undefined) await within(conn.whenReadable(), WAIT_MS, "readable");
    else got += n;
  }
  return got;
}

Deno.test("FdConn.recvInto() fills several ranges of a region in order, and nothing around them", async () => {
  await withPair(async (conn, peer) => {
    const region = Region.alloc(64 * 1024);
    region.fill(0, region.size, 0xee);
    const data = new Uint8Array(10_000).map((_, i) => (i * 13) & 0xff);
    await writeAll(peer, data);
    // Three ranges with gaps between them, as packets' payloads around
    // their headers.
    const dest = ranges([100, 4000], [4200, 46], [5000, 5954]);
    assertEquals(await recvAll(conn, region, dest, 10_000), 10_000);
    assertEquals(region.span(100, 4000), data.subarray(0, 4000));
    assertEquals(region.span(4200, 46), data.subarray(4000, 4046));
    assertEquals(region.span(5000, 5954), data.subarray(4046));
    for (const [o, l] of [[0, 100], [4100, 100], [4246, 754], [10954, 100]]) {
      assert(
        region.span(o!, l!).every((b) => b === 0xee),
        `gap at ${o} untouched`,
      );
    }
  });
});

Deno.test("FdConn.recvInto() says undefined when the socket is empty, and whenReadable() resolves when bytes come", async () => {
  await withPair(async (conn, peer) => {
    const region = Region.alloc(4096);
    const dest = ranges([0, 100]);
    assertEquals(conn.recvInto(region, dest), undefined);
    const readable = conn.whenReadable();
    await peer.write(new Uint8Array([1, 2, 3]));
    await within(readable, WAIT_MS, "readable");
    assertEquals(conn.recvInto(region, ranges([0, 100], [200, 100])), 3);
    assertEquals([...region.span(0, 3)], [1, 2, 3]);
  });
});

Deno.test("FdConn.recvInto() returns null at the peer's FIN, after the last bytes", async () => {
  await withPair(async (conn, peer) => {
    const region = Region.alloc(4096);
    await peer.write(new Uint8Array([9, 8]));
    await peer.closeWrite();
    assertEquals(await recvAll(conn, region, ranges([10, 5], [50, 5]), 2), 2);
    let end: number | null | undefined;
    for (let i = 0; i < 100 && end !== null; i++) {
      end = conn.recvInto(region, ranges([10, 5]));
      if (end === undefined) await within(conn.whenReadable(), WAIT_MS, "fin");
    }
    assertEquals(end, null);
  });
});

Deno.test("FdConn.recvInto() refuses a range outside the region, or a closed region, before any byte is read", async () => {
  await withPair(async (conn, peer) => {
    const region = Region.alloc(4096);
    await peer.write(new Uint8Array(16).fill(7));
    await within(conn.whenReadable(), WAIT_MS, "readable");
    assertThrows(
      () => conn.recvInto(region, ranges([0, 8], [4090, 100])),
      RangeError,
    );
    assertThrows(() => conn.recvInto(region, ranges([4095, 2])), RangeError);
    // Nor into a closed region, whose cached address may be unmapped.
    const gone = Region.alloc(4096);
    gone.close();
    assertThrows(
      () => conn.recvInto(gone, ranges([0, 8], [100, 8])),
      RangeError,
      "closed",
    );
    // The bytes are still there for a good read.
    assertEquals(await recvAll(conn, region, ranges([0, 16]), 16), 16);
    assert(region.span(0, 16).every((b) => b === 7));
  });
});

Deno.test("FdConn.recvInto() on a closed conn throws BadResource, and whenReadable() pending at close rejects", async () => {
  await withPair(async (conn) => {
    const region = Region.alloc(4096);
    assertEquals(conn.recvInto(region, ranges([0, 10])), undefined);
    const waiting = conn.whenReadable();
    conn.close();
    await assertRejects(() => waiting, Deno.errors.BadResource);
    assertThrows(
      () => conn.recvInto(region, ranges([0, 10])),
      Deno.errors.BadResource,
    );
    await assertRejects(() => conn.whenReadable(), Deno.errors.BadResource);
  });
});

Deno.test("FdConn.recvInto() throws ConnectionReset when the peer resets", async () => {
  const io = new IoPoller();
  const pump = pumpIo(io);
  try {
    // A peer closing with bytes of ours unread sends RST; a Deno.Conn
    // closing that way sends FIN here, so the peer is an FdConn too.
    const accepted = Promise.withResolvers<FdConn>();
    const listener = await FdListener.listen(io, "127.0.0.1", 0, {
      onConnection: (c) => accepted.resolve(c),
    });
    const conn = await connectTcp(io, "127.0.0.1", listener.addr.port, WAIT_MS);
    const peer = await within(accepted.promise, WAIT_MS, "accept");
    listener.close();
    await conn.write(new Uint8Array([1, 2]));
    assertEquals(await within(peer.read(new Uint8Array(1)), WAIT_MS, "x"), 1);
    peer.close();
    const region = Region.alloc(4096);
    let err: unknown;
    for (let i = 0; i < 100 && err === undefined; i++) {
      try {
        const n = conn.recvInto(region, ranges([0, 10]));
        if (n === undefined) {
          await within(conn.whenReadable(), WAIT_MS, "reset");
        }
        if (n === null) break;
      } catch (e) {
        err = e;
      }
    }
    assert(err instanceof Deno.errors.ConnectionReset, String(err));
    conn.close();
  } finally {
    pump.stop();
    io.close();
  }
});
