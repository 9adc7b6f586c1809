/**
 * Feature bits the ivsock device offers, and the check it makes before
 * accepting FEATURES_OK.
 *
 * @module
 */

import { FEATURE, featureBit } from "../virtio.ts";

/** virtio-vsock feature bits (virtio 1.3, 5.10.3) and the seed's MRG_RXBUF. */
export const VSOCK_FEATURE = {
  STREAM: 0,
  SEQPACKET: 1,
  /** The proposed VIRTIO_VSOCK_F_MRG_RXBUF (the seed); never merged upstream. */
  MRG_RXBUF: 3,
} as const;

/** Names for messages. */
const NAMES: Record<number, string> = {
  0: "STREAM",
  1: "SEQPACKET",
  2: "NO_IMPLIED_STREAM",
  3: "MRG_RXBUF",
  28: "RING_INDIRECT_DESC",
  29: "RING_EVENT_IDX",
  32: "VERSION_1",
  33: "ACCESS_PLATFORM",
  34: "RING_PACKED",
  35: "IN_ORDER",
};

/** The features the device offers by default. */
export const OFFERED_FEATURES = featureBit(VSOCK_FEATURE.STREAM) |
  featureBit(VSOCK_FEATURE.SEQPACKET) |
  featureBit(VSOCK_FEATURE.MRG_RXBUF) |
  featureBit(FEATURE.RING_INDIRECT_DESC) |
  featureBit(FEATURE.RING_EVENT_IDX) |
  featureBit(FEATURE.VERSION_1);

/** `"bit 34 (RING_PACKED)"`. */
export function featureName(bit: number): string {
  const name = NAMES[bit];
  return name === undefined ? `bit ${bit}` : `bit ${bit} (${name})`;
}

/** Bit numbers set in `features`. */
export function featureBits(features: bigint): number[] {
  const bits: number[] = [];
  for (let b = 0; b < 64; b++) if (features & (1n << BigInt(b))) bits.push(b);
  return bits;
}

/**
 * Why the driver's accepted set cannot be used with what was offered, or
 * `null` when it is consistent: a subset of the offer, with VERSION_1 (this
 * transport has no legacy mode).
 */
export function checkDriverFeatures(
  offered: bigint,
  accepted: bigint,
): string | null {
  const extra = accepted & ~offered;
  if (extra !== 0n) {
    return `driver accepted ${
      featureBits(extra).map(featureName).join(", ")
    }, not offered by the device`;
  }
  if ((accepted & featureBit(FEATURE.VERSION_1)) === 0n) {
    return "driver did not accept bit 32 (VERSION_1), which this transport requires";
  }
  return null;
}

/** Whether `bit` is set in `features`. */
export function hasFeature(features: bigint, bit: number): boolean {
  return (features & featureBit(bit)) !== 0n;
}
