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
 * Receive window a connection starts with (buf_alloc): Linux's default
 * socket buffer_size, 256 KiB.
 */
export const INITIAL_BUF_ALLOC = 256 * 1024;

/**
 * Largest receive window a connection grows to (see
 * {@linkcode growBufAlloc}), and so the most memory its unread data can
 * hold: a peer that sends more is reset. 4 MiB, the order of Linux's TCP
 * receive autotuning limit (tcp_rmem max 6 MiB): with two processes in the
 * path on two shared cores each stage runs in bursts of a scheduler slice,
 * and bulk transfer took 256 KiB windows 550-640 MiB/s, 1 MiB 720-870, 4
 * MiB 890-1,275 (docs/performance.md).
 */
export const DEFAULT_BUF_ALLOC = 4 * 1024 * 1024;

/**
 * The window after a credit update, as TCP's receive autotuning grows its
 * buffer: doubled (up to `max`) when the peer used half the window since
 * the last update while the reader kept up (less than half of it left
 * unread after a read, which takes at most a quarter: `joinLimit`), since
 * then the window, not the reader, limits the connection. A reader that
 * falls behind never grows it, so a slow consumer holds no more than the
 * starting window.
 *
 * Bulk data arrives in bursts of many packets per turn of the ring loop, so
 * even a reader that keeps up often finds much of the window queued: with
 * "at most an eighth left unread" a transfer's window reached 4 MiB only
 * after 37-89 MB, with "less than half" after about 2.4 MB.
 */
export function growBufAlloc(
  current: number,
  max: number,
  unread: number,
): number {
  if (current >= max || unread >= current >>> 1) return current;
  return Math.min(max, current * 2);
}

/**
 * Send a CREDIT_UPDATE once the space the peer believes it has left falls
 * below this. Half the buffer, as a TCP receiver opens its window: the
 * sender always holds half a window of credit, so it never stalls waiting
 * for an update while the reader keeps up. (Linux updates below 64 KiB,
 * which suits its 4 KiB packets; with 64 KiB packets that rule left the
 * sender out of credit every 256 KiB, measured as 511 CREDIT_REQUESTs per
 * 2048 packets.)
 */
export function creditUpdateThreshold(bufAlloc: number): number {
  return Math.max(1, bufAlloc >>> 1);
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

/**
 * Packets one connection may send per turn before others get theirs; or
 * one pull from a piped source (VsockConnection.pipeFrom), which may take
 * more packets of small buffers but about as many bytes as four full
 * packets (FILL_BYTES): one read of the socket, however the guest sizes
 * its buffers.
 */
export const PACKETS_PER_TURN = 4;

/**
 * Unread packets a connection holds at least, whatever its buffer: room for
 * empty SEQPACKET messages beyond those that carry bytes.
 */
export const MIN_QUEUED_PACKETS = 64;

/**
 * Unread packets (STREAM chunks, SEQPACKET messages) a connection with a
 * `bufAlloc`-byte receive buffer may hold: a peer that sends more before the
 * application reads is reset. Credit bounds the bytes, but an empty
 * SEQPACKET message uses no credit at all, so without a second bound a peer
 * could queue them without end while the application is not reading.
 *
 * A peer that keeps to its credit never reaches this with messages that
 * carry a byte or more (there can be at most `bufAlloc` of them), and a
 * STREAM peer never gets near it (small payloads share chunks). Each queued
 * message costs five bytes beyond its payload (see `message_ring.ts`), so
 * at the limit a connection holds at most about `6 * bufAlloc` bytes.
 */
export function maxQueuedPackets(bufAlloc: number): number {
  return bufAlloc + MIN_QUEUED_PACKETS;
}
