/**
 * virtio constants shared by both roles: device status bits, feature bits
 * and split-ring flags (virtio 1.3, sections 2.1, 2.7 and 6).
 *
 * @module
 */

/** Device status bits (virtio 2.1). */
export const STATUS = {
  ACKNOWLEDGE: 1,
  DRIVER: 2,
  DRIVER_OK: 4,
  FEATURES_OK: 8,
  NEEDS_RESET: 64,
  FAILED: 128,
} as const;

/** Feature bit numbers. vsock's own bits are in `device/vsock/`. */
export const FEATURE = {
  /** Descriptors may point at a table of descriptors (2.7.5.3). */
  RING_INDIRECT_DESC: 28,
  /** used_event / avail_event suppression (2.7.7, 2.7.10). */
  RING_EVENT_IDX: 29,
  /** Non-legacy device (6.1). */
  VERSION_1: 32,
} as const;

/** The bit mask for a feature bit number. */
export function featureBit(bit: number): bigint {
  return 1n << BigInt(bit);
}

/** Split-ring descriptor flags (2.7.5). */
export const DESC_F = {
  NEXT: 1,
  WRITE: 2,
  INDIRECT: 4,
} as const;

/** `avail.flags` bit: the driver does not want used-buffer notifications. */
export const AVAIL_F_NO_INTERRUPT = 1;

/** `used.flags` bit: the device does not want available-buffer notifications. */
export const USED_F_NO_NOTIFY = 1;

/** The largest split queue (2.7: Queue Size is at most 32768). */
export const MAX_QUEUE_SIZE = 32768;

/**
 * The largest total length of one descriptor chain (2.7.5.2: "at most 2^32
 * bytes"); kept so that sums of lengths stay exact.
 */
export const MAX_CHAIN_BYTES = 2 ** 32;
