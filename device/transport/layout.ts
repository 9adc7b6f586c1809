/**
 * The ivsock region layout, version 1: byte offsets of every header field.
 * `docs/transport.md` is the normative description; this file is its
 * machine-readable twin and the only place offsets are written down.
 *
 * Every field is little-endian. Each word has exactly one writer (the device
 * or the driver), so neither side ever needs an atomic read-modify-write on
 * a word the other side also writes.
 *
 * @module
 */

/** "IVSK" read as a le32: bytes 0x49 0x56 0x53 0x4b. */
export const MAGIC = 0x4b535649;
/** Layout version this code speaks. */
export const LAYOUT_VERSION = 1;
/**
 * Bytes reserved for the header. The driver allocates rings and buffers
 * from here on; one page keeps them page-aligned.
 */
export const HEADER_SIZE = 4096;
/**
 * Smallest region: the header, three small rings and a buffer pool that can
 * hold a full 64 KiB packet each way.
 */
export const MIN_TRANSPORT_REGION = 256 * 1024;

/** Header field offsets; the comment names the side that writes the field. */
export const H = {
  /** le32, device: {@linkcode MAGIC}. */
  MAGIC: 0,
  /** le16, device: {@linkcode LAYOUT_VERSION}. */
  VERSION: 4,
  /** le16, device: {@linkcode HEADER_SIZE}. */
  HEADER_SIZE: 6,
  /** le32, device: size of the whole region in bytes. */
  REGION_SIZE: 8,
  /** le32, device: largest queue size the device accepts. */
  MAX_QUEUE_SIZE: 12,
  /** le64, device: features offered. */
  DEVICE_FEATURES: 16,
  /** le64, driver: features accepted. */
  DRIVER_FEATURES: 24,
  /** le32, driver: virtio status bits the driver has set (0 = reset). */
  DRIVER_STATUS: 32,
  /** le32, driver: incremented with every write of DRIVER_STATUS. */
  STATUS_SEQ: 36,
  /** le32, device: the status bits the device has accepted, plus NEEDS_RESET. */
  DEVICE_STATUS: 40,
  /** le32, device: the STATUS_SEQ value DEVICE_STATUS answers. */
  STATUS_ACK: 44,
  /** le64, device: the guest's CID (virtio-vsock config `guest_cid`). */
  GUEST_CID: 48,
  /** le32, device: config generation; odd while the device updates config. */
  CONFIG_GENERATION: 56,
  /** le32, device: incremented each time a device process attaches. */
  DEVICE_GENERATION: 60,
  /** le32, device: incremented at least every heartbeat interval while alive. */
  DEVICE_HEARTBEAT: 64,
  /** le32, driver: incremented each time a driver starts (before ACKNOWLEDGE). */
  DRIVER_GENERATION: 68,
  /** le32, driver: incremented at least every heartbeat interval while alive. */
  DRIVER_HEARTBEAT: 72,
  /** le32, device: ivshmem peer id to ring for the device (doorbell mode). */
  DEVICE_PEER: 76,
  /** le32, driver: the driver's ivshmem peer id (IVPosition), or 0xffffffff. */
  DRIVER_PEER: 80,
  /** le32, device: notification mode, {@linkcode NOTIFY_MODE}. */
  NOTIFY_MODE: 84,
  /** le32, driver: offset of the buffer pool. */
  POOL_OFFSET: 88,
  /** le32, driver: size of the buffer pool. */
  POOL_SIZE: 92,
  /** Queue configuration: three 32-byte records, rx, tx, event. */
  QUEUES: 96,
  /** 256 bytes, device: ASCII reason for NEEDS_RESET or a refusal, NUL-padded. */
  REASON: 192,
} as const;

/** Length of the reason text field. */
export const REASON_LENGTH = 256;

/** Offsets inside one queue record. */
export const Q = {
  /** le16: number of descriptors, a power of two (0 = queue not set up). */
  SIZE: 0,
  /** le16: 1 when the driver has set the queue up. */
  ENABLE: 2,
  /** le32: the vector the device rings for this queue (doorbell mode). */
  VECTOR: 4,
  /** le64: offset of the descriptor table. */
  DESC: 8,
  /** le64: offset of the available ring (virtio's "driver area"). */
  DRIVER: 16,
  /** le64: offset of the used ring (virtio's "device area"). */
  DEVICE: 24,
} as const;

/** Size of one queue record. */
export const QUEUE_RECORD = 32;

/** virtio-vsock queue indices (virtio 1.3, 5.10.2). */
export const QUEUE = { RX: 0, TX: 1, EVENT: 2 } as const;

/** Offset of queue `index`'s record. */
export function queueRecord(index: number): number {
  return H.QUEUES + index * QUEUE_RECORD;
}

/** How the two sides wake each other. */
export const NOTIFY_MODE = {
  /** Both sides poll; no doorbells (ivshmem-plain). */
  POLL: 0,
  /** ivshmem-doorbell: the driver rings the device's peer id. */
  DOORBELL: 1,
} as const;

/** Doorbell vectors of the device (what the driver rings). */
export const DEVICE_VECTOR = {
  /** DRIVER_STATUS changed. */
  CONFIG: 0,
  /** A queue has new available buffers. */
  QUEUE: 1,
} as const;

/** "No peer id" for DRIVER_PEER. */
export const NO_PEER = 0xffffffff;

/** Reads the NUL-padded reason text. */
export function readReason(bytes: Uint8Array): string {
  const end = bytes.indexOf(0);
  return new TextDecoder().decode(end < 0 ? bytes : bytes.subarray(0, end));
}

/** Encodes a reason into exactly {@linkcode REASON_LENGTH} bytes (ASCII, cut). */
export function encodeReason(reason: string): Uint8Array {
  const out = new Uint8Array(REASON_LENGTH);
  // Printable ASCII only: the field may end up in a C driver's printk.
  const ascii = reason.replace(/[^\x20-\x7e]/g, "?").slice(
    0,
    REASON_LENGTH - 1,
  );
  out.set(new TextEncoder().encode(ascii));
  return out;
}

/**
 * A word a transport's waker watches: a header word, or a queue's ring
 * index (`queue` says which), so that a runner can mute the queues it does
 * not need news of.
 */
export interface WatchedRingWord {
  offset: number;
  width: 2 | 4;
  queue?: "rx" | "tx" | "event";
}

/** The waker mute bits of the words of `queues` in `words`. */
export function queueBits(
  words: readonly WatchedRingWord[],
  queues: ReadonlyArray<"rx" | "tx" | "event">,
): number {
  let bits = 0;
  words.forEach((w, i) => {
    if (w.queue !== undefined && queues.includes(w.queue)) bits |= 1 << i;
  });
  return bits;
}
