/**
 * Device-to-driver packets, driver side: reassembly, and what the driver does
 * with a device that lies about lengths or num_buffers (drops the packet,
 * reposts the buffers, reports why, and keeps going).
 */
import { assert, assertEquals, assertMatch } from "../../../dev_deps.ts";
import { Region } from "../../../device/shm/region.ts";
import { DriverQueue } from "../../../device/virtqueue/driver_queue.ts";
import {
  packSplitRing,
  USED_IDX,
  USED_RING,
} from "../../../device/virtqueue/split_ring.ts";
import { DriverRx } from "../../../device/packets/driver_rx.ts";
import {
  encodeHeader,
  HDR_LEN,
  MRG_HDR_LEN,
  newHeader,
  OP,
} from "../../../device/packets/header.ts";

const BUF = 128;

/** A driver with rx buffers posted, and a fake device that writes anything. */
function setup(mergeable: boolean, size = 8) {
  const region = Region.alloc(1 << 16);
  const { layout, end } = packSplitRing(0, size);
  const start = Math.ceil(end / 4096) * 4096;
  const q = new DriverQueue(region, layout, { name: "rx", eventIdx: false });
  const errors: string[] = [];
  const rx = new DriverRx(q, {
    mergeable,
    bufferSize: BUF,
    window: { start, end: start + size * BUF },
    onError: (e) => errors.push(e),
  });
  rx.fill();
  q.publish();
  let usedIdx = 0;
  let availPos = 0;
  /** The next posted buffer (head and offset), in posting order. */
  const nextBuffer = () => {
    const head = region.getU16(layout.avail + 4 + 2 * (availPos++ % size));
    const offset = region.getOffset64(layout.desc + 16 * head);
    return { head, offset };
  };
  /** Device: writes a header (+num_buffers) and returns buffers with lengths. */
  const deliver = (
    parts: Array<
      { len: number; header?: { len: number; numBuffers?: number } }
    >,
  ) => {
    for (const p of parts) {
      const b = nextBuffer();
      if (p.header) {
        const h = newHeader();
        Object.assign(h, {
          srcCid: 2,
          dstCid: 3,
          op: OP.RW,
          type: 1,
          len: p.header.len,
        });
        const bytes = region.span(b.offset, MRG_HDR_LEN);
        const view = new DataView(bytes.buffer, bytes.byteOffset, MRG_HDR_LEN);
        encodeHeader(view, 0, h);
        if (mergeable) view.setUint16(44, p.header.numBuffers ?? 1, true);
      }
      const at = layout.used + USED_RING + 8 * (usedIdx % size);
      region.setU32(at, b.head);
      region.setU32(at + 4, p.len);
      usedIdx = (usedIdx + 1) & 0xffff;
    }
    region.store16(layout.used + USED_IDX, usedIdx);
  };
  return { q, rx, errors, deliver };
}

Deno.test("driver reassembles a packet spread over several buffers", () => {
  const { rx, deliver, errors } = setup(true);
  deliver([
    { len: BUF, header: { len: 2 * BUF - MRG_HDR_LEN + 10, numBuffers: 3 } },
    { len: BUF },
    { len: 10 },
  ]);
  assert(rx.next());
  assertEquals(rx.packet.count, 3);
  assertEquals(rx.packet.chunks.slice(0, 3).map((c) => c.length), [
    BUF - MRG_HDR_LEN,
    BUF,
    10,
  ]);
  assertEquals(errors, []);
});

Deno.test("driver waits for every buffer num_buffers announces", () => {
  const { rx, deliver } = setup(true);
  deliver([{
    len: BUF,
    header: { len: BUF - MRG_HDR_LEN + 5, numBuffers: 2 },
  }]);
  assertEquals(rx.next(), false);
  deliver([{ len: 5 }]);
  assert(rx.next());
  assertEquals(rx.packet.header.len, BUF - MRG_HDR_LEN + 5);
});

Deno.test("driver drops a buffer whose used length is shorter than the header", () => {
  const { rx, deliver, errors } = setup(true);
  deliver([{ len: MRG_HDR_LEN - 1, header: { len: 0 } }]);
  assertEquals(rx.next(), false);
  assertMatch(errors[0]!, /used length 45 is shorter than the 46-byte header/);
});

Deno.test("driver drops a packet whose header claims more than 64 KiB", () => {
  const { rx, deliver, errors } = setup(false);
  deliver([{ len: BUF, header: { len: 70_000 } }]);
  assertEquals(rx.next(), false);
  assertMatch(errors[0]!, /payload length 70000 exceeds 65536/);
});

Deno.test("driver drops a single-buffer packet whose length disagrees with its header", () => {
  const { rx, deliver, errors } = setup(false);
  deliver([{ len: HDR_LEN + 10, header: { len: 11 } }]);
  assertEquals(rx.next(), false);
  assertMatch(errors[0]!, /hold 10 payload bytes, but its header says 11/);
});

Deno.test("driver drops a merged packet with num_buffers 0", () => {
  const { rx, deliver, errors } = setup(true);
  deliver([{ len: MRG_HDR_LEN, header: { len: 0, numBuffers: 0 } }]);
  assertEquals(rx.next(), false);
  assertMatch(errors[0]!, /num_buffers 0 is impossible/);
});

Deno.test("driver drops a merged packet whose num_buffers is more than its length needs", () => {
  const { rx, deliver, errors } = setup(true);
  deliver([{ len: MRG_HDR_LEN + 10, header: { len: 10, numBuffers: 2 } }]);
  assertEquals(rx.next(), false);
  assertMatch(errors[0]!, /num_buffers 2 is impossible for a 10-byte payload/);
});

Deno.test("driver drops a merged packet whose middle buffer is not full", () => {
  const { rx, deliver, errors } = setup(true);
  deliver([
    { len: BUF, header: { len: 2 * BUF - MRG_HDR_LEN + 2, numBuffers: 3 } },
    { len: BUF - 1 },
    { len: 2 },
  ]);
  assertEquals(rx.next(), false);
  assertMatch(
    errors[0]!,
    /buffer 2 of 3 holds 127 bytes, but every buffer but the last must be full/,
  );
});

Deno.test("driver drops a merged packet whose buffers disagree with its header length", () => {
  const { rx, deliver, errors } = setup(true);
  deliver([{ len: BUF, header: { len: 500, numBuffers: 1 } }]);
  assertEquals(rx.next(), false);
  assertMatch(errors[0]!, /hold 82 payload bytes, but its header says 500/);
  assertEquals(errors.length, 1);
});

Deno.test("driver reposts the buffers of a dropped packet and recovers", () => {
  const { q, rx, deliver, errors } = setup(true, 4);
  deliver([{ len: 3, header: { len: 0 } }]); // too short: dropped
  assertEquals(rx.next(), false);
  assertEquals(q.inFlight, 4, "the dropped buffer is posted again");
  deliver([{ len: MRG_HDR_LEN + 7, header: { len: 7, numBuffers: 1 } }]);
  assert(rx.next());
  assertEquals(rx.packet.header.len, 7);
  assertEquals(errors.length, 1);
});
