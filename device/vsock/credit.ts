/**
 * Credit arithmetic (virtio 1.3, 5.10.6.3): counters are free-running u32s,
 * so every difference is taken modulo 2^32.
 *
 * @module
 */

/** `(a - b) mod 2^32`. */
export function u32Diff(a: number, b: number): number {
  return (a - b) >>> 0;
}

/**
 * Bytes the peer can still take: `peer_buf_alloc - (tx_cnt - peer_fwd_cnt)`,
 * clamped at 0 (a peer that shrank its buffer may owe us negative space).
 */
export function peerFree(
  peerBufAlloc: number,
  txCnt: number,
  peerFwdCnt: number,
): number {
  const inFlight = u32Diff(txCnt, peerFwdCnt);
  return inFlight >= peerBufAlloc ? 0 : peerBufAlloc - inFlight;
}
