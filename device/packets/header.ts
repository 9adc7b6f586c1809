/**
 * The virtio-vsock packet header (virtio 1.3, 5.10.6) and the mergeable
 * receive header of the MRG_RXBUF proposal (the seed).
 *
 * ```text
 * struct virtio_vsock_hdr {          // 44 bytes, packed, little-endian
 *   le64 src_cid;    //  0          le16 type;      // 28
 *   le64 dst_cid;    //  8          le16 op;        // 30
 *   le32 src_port;   // 16          le32 flags;     // 32
 *   le32 dst_port;   // 20          le32 buf_alloc; // 36
 *   le32 len;        // 24          le32 fwd_cnt;   // 40
 * };
 * struct virtio_vsock_hdr_mrg_rxbuf { struct virtio_vsock_hdr hdr; le16 num_buffers; } // 46
 * ```
 *
 * CIDs are 64-bit on the wire with the upper 32 bits reserved and zero; they
 * are decoded as numbers and a non-zero upper half is reported as
 * {@linkcode INVALID_CID} so that the receiver drops the packet.
 *
 * @module
 */

/** Size of `struct virtio_vsock_hdr`. */
export const HDR_LEN = 44;
/** Size of `struct virtio_vsock_hdr_mrg_rxbuf`: the header plus num_buffers. */
export const MRG_HDR_LEN = 46;
/** Offset of `num_buffers` in the mergeable header. */
export const NUM_BUFFERS_OFFSET = 44;

/**
 * Largest payload of one packet: Linux's VIRTIO_VSOCK_MAX_PKT_BUF_SIZE
 * (64 KiB); vhost and Firecracker drop anything longer, and so do we.
 */
export const MAX_PAYLOAD = 64 * 1024;

/** Stands for a CID whose reserved upper 32 bits were not zero. */
export const INVALID_CID = -1;

/** Operations (virtio 1.3, 5.10.6). */
export const OP = {
  INVALID: 0,
  REQUEST: 1,
  RESPONSE: 2,
  RST: 3,
  SHUTDOWN: 4,
  RW: 5,
  CREDIT_UPDATE: 6,
  CREDIT_REQUEST: 7,
} as const;

/** Op names by value, for logs and counters: `OP_NAMES[OP.RW]` is "RW". */
export const OP_NAMES: readonly string[] = Object.keys(OP);

/** Socket types. */
export const TYPE = {
  STREAM: 1,
  SEQPACKET: 2,
} as const;

/** SHUTDOWN flags: bit masks as Linux uses them (the spec lists bit numbers). */
export const SHUTDOWN_F = {
  /** The sender will receive no more data. */
  RCV: 1,
  /** The sender will send no more data. */
  SEND: 2,
} as const;

/** RW flags for SEQPACKET. */
export const SEQ_F = {
  /** Last packet of a message. */
  EOM: 1,
  /** Last packet of a record (MSG_EOR). */
  EOR: 2,
} as const;

/** Well-known CIDs. */
export const CID = {
  HYPERVISOR: 0,
  LOCAL: 1,
  HOST: 2,
} as const;

/** A decoded header; reused across packets to avoid allocation. */
export interface PacketHeader {
  srcCid: number;
  dstCid: number;
  srcPort: number;
  dstPort: number;
  len: number;
  type: number;
  op: number;
  flags: number;
  bufAlloc: number;
  fwdCnt: number;
}

/** A zeroed header object. */
export function newHeader(): PacketHeader {
  return {
    srcCid: 0,
    dstCid: 0,
    srcPort: 0,
    dstPort: 0,
    len: 0,
    type: 0,
    op: 0,
    flags: 0,
    bufAlloc: 0,
    fwdCnt: 0,
  };
}

/** Decodes the 44-byte header at `view[offset]` into `out`. */
export function decodeHeader(
  view: DataView,
  offset: number,
  out: PacketHeader,
): PacketHeader {
  out.srcCid = cid(view, offset);
  out.dstCid = cid(view, offset + 8);
  out.srcPort = view.getUint32(offset + 16, true);
  out.dstPort = view.getUint32(offset + 20, true);
  out.len = view.getUint32(offset + 24, true);
  out.type = view.getUint16(offset + 28, true);
  out.op = view.getUint16(offset + 30, true);
  out.flags = view.getUint32(offset + 32, true);
  out.bufAlloc = view.getUint32(offset + 36, true);
  out.fwdCnt = view.getUint32(offset + 40, true);
  return out;
}

/** Encodes `h` as the 44-byte header at `view[offset]`. */
export function encodeHeader(
  view: DataView,
  offset: number,
  h: PacketHeader,
): void {
  view.setUint32(offset, h.srcCid >>> 0, true);
  view.setUint32(offset + 4, 0, true);
  view.setUint32(offset + 8, h.dstCid >>> 0, true);
  view.setUint32(offset + 12, 0, true);
  view.setUint32(offset + 16, h.srcPort >>> 0, true);
  view.setUint32(offset + 20, h.dstPort >>> 0, true);
  view.setUint32(offset + 24, h.len >>> 0, true);
  view.setUint16(offset + 28, h.type, true);
  view.setUint16(offset + 30, h.op, true);
  view.setUint32(offset + 32, h.flags >>> 0, true);
  view.setUint32(offset + 36, h.bufAlloc >>> 0, true);
  view.setUint32(offset + 40, h.fwdCnt >>> 0, true);
}

function cid(view: DataView, offset: number): number {
  return view.getUint32(offset + 4, true) === 0
    ? view.getUint32(offset, true)
    : INVALID_CID;
}

/** A header's name for logs: `RW 3:1024 -> 2:80 len 512`. */
export function describeHeader(h: PacketHeader): string {
  const op = Object.entries(OP).find(([, v]) => v === h.op)?.[0] ??
    `op ${h.op}`;
  return `${op} ${h.srcCid}:${h.srcPort} -> ${h.dstCid}:${h.dstPort} len ${h.len}`;
}

/**
 * A scratch buffer big enough for a mergeable header, with its DataView and
 * fixed views of the two header sizes, made once so that the per-packet path
 * allocates nothing.
 */
export class HeaderScratch {
  readonly bytes: Uint8Array<ArrayBuffer> = new Uint8Array(MRG_HDR_LEN);
  readonly view: DataView<ArrayBuffer> = new DataView(this.bytes.buffer);
  /** The first 44 bytes: a plain header. */
  readonly plain: Uint8Array<ArrayBuffer> = this.bytes.subarray(0, HDR_LEN);

  /** The header bytes for a given header length (44 or 46). */
  sized(length: number): Uint8Array<ArrayBuffer> {
    return length === HDR_LEN ? this.plain : this.bytes;
  }
}
