/**
 * The vsock engine's limits and timeouts, each with where its value comes
 * from.
 *
 * @module
 */

/**
 * A connect that gets no RESPONSE in this long fails with ETIMEDOUT: Linux's
 * `VSOCK_DEFAULT_CONNECT_TIMEOUT` (2 * HZ); Firecracker uses 2000 ms too.
 */
export const CONNECT_TIMEOUT_MS = 2000;

/**
 * After a local close sends SHUTDOWN, the peer has this long to answer with
 * RST before we send one ourselves: Linux's `VSOCK_CLOSE_TIMEOUT` (8 * HZ).
 */
export const CLOSE_TIMEOUT_MS = 8000;

/**
 * Receive buffer advertised per connection (buf_alloc): Linux's default
 * socket buffer_size, 256 KiB. Memory held for a connection's unread data
 * never exceeds it: a peer that sends more is reset.
 */
export const DEFAULT_BUF_ALLOC = 256 * 1024;

/**
 * Send a CREDIT_UPDATE once the peer's idea of our free space has fallen
 * this far behind the truth. Linux updates when the free space the peer
 * sees drops below 64 KiB (`VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`); Firecracker
 * every 4 KiB forwarded. A quarter of the buffer keeps updates rare on a
 * busy stream while the peer never waits on a full window.
 */
export function creditUpdateThreshold(bufAlloc: number): number {
  return Math.max(1, Math.min(bufAlloc >>> 2, 64 * 1024));
}

/**
 * Connections per engine. Firecracker caps at 1023; the benchmarks hold
 * 10,000 idle connections, and each idle one costs only a few KiB.
 */
export const DEFAULT_MAX_CONNECTIONS = 16384;

/** Pending accepts per listener before further REQUESTs are refused with RST. */
export const DEFAULT_BACKLOG = 128;

/**
 * Replies not tied to a live connection (RSTs for unknown connections or
 * types) waiting for room in the queue. Tx processing never stops for them;
 * beyond this many, new ones are dropped and counted (Firecracker's
 * MUXER_RXQ_SIZE is 256; vhost pauses tx instead).
 */
export const MAX_PENDING_REPLIES = 1024;

/** Ephemeral local ports, round-robin, as Firecracker allocates them: [2^30, 2^31). */
export const EPHEMERAL_FIRST = 2 ** 30;
export const EPHEMERAL_LAST = 2 ** 31 - 1;

/** Packets one connection may send per turn before others get theirs. */
export const PACKETS_PER_TURN = 4;
