import { assertEquals } from "../../../dev_deps.ts";
import {
  decodeHeader,
  describeHeader,
  encodeHeader,
  HDR_LEN,
  INVALID_CID,
  MRG_HDR_LEN,
  newHeader,
  OP,
  TYPE,
} from "../../../device/packets/header.ts";

Deno.test("header sizes match struct virtio_vsock_hdr and the mergeable header", () => {
  assertEquals(HDR_LEN, 44);
  assertEquals(MRG_HDR_LEN, 46);
});

Deno.test("encodeHeader() puts every field at its offset, little-endian", () => {
  const h = newHeader();
  Object.assign(h, {
    srcCid: 0x11223344,
    dstCid: 2,
    srcPort: 0xaabbccdd,
    dstPort: 80,
    len: 0x10000,
    type: TYPE.SEQPACKET,
    op: OP.RW,
    flags: 3,
    bufAlloc: 262144,
    fwdCnt: 0xfffffffe,
  });
  const bytes = new Uint8Array(HDR_LEN);
  const view = new DataView(bytes.buffer);
  encodeHeader(view, 0, h);
  const at = (o: number, n: number) => [...bytes.subarray(o, o + n)];
  assertEquals(at(0, 8), [0x44, 0x33, 0x22, 0x11, 0, 0, 0, 0]);
  assertEquals(at(8, 8), [2, 0, 0, 0, 0, 0, 0, 0]);
  assertEquals(at(16, 4), [0xdd, 0xcc, 0xbb, 0xaa]);
  assertEquals(at(20, 4), [80, 0, 0, 0]);
  assertEquals(at(24, 4), [0, 0, 1, 0]);
  assertEquals(at(28, 2), [2, 0]);
  assertEquals(at(30, 2), [5, 0]);
  assertEquals(at(32, 4), [3, 0, 0, 0]);
  assertEquals(at(36, 4), [0, 0, 4, 0]);
  assertEquals(at(40, 4), [0xfe, 0xff, 0xff, 0xff]);
  assertEquals(decodeHeader(view, 0, newHeader()), h);
});

Deno.test("decodeHeader() marks a CID with reserved upper bits as invalid", () => {
  const bytes = new Uint8Array(HDR_LEN);
  const view = new DataView(bytes.buffer);
  view.setUint32(0, 3, true);
  view.setUint32(4, 1, true); // src_cid = 2^32 + 3
  view.setUint32(8, 2, true);
  const h = decodeHeader(view, 0, newHeader());
  assertEquals(h.srcCid, INVALID_CID);
  assertEquals(h.dstCid, 2);
});

Deno.test("describeHeader() names the op, both ends and the length", () => {
  const h = newHeader();
  Object.assign(h, {
    op: OP.REQUEST,
    srcCid: 3,
    srcPort: 1024,
    dstCid: 2,
    dstPort: 80,
  });
  assertEquals(describeHeader(h), "REQUEST 3:1024 -> 2:80 len 0");
  h.op = 99;
  assertEquals(describeHeader(h).startsWith("op 99 "), true);
});
