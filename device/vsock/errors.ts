/**
 * Errors a vsock connection reports, named after the errno a socket would
 * give for the same event.
 *
 * @module
 */

/** Why a connection failed or ended abnormally. */
export type VsockErrorCode =
  /** No listener, the backlog was full, or the peer refused. */
  | "ECONNREFUSED"
  /** The peer reset an open connection. */
  | "ECONNRESET"
  /** No RESPONSE within the connect timeout. */
  | "ETIMEDOUT"
  /** Writing after the peer stopped receiving, or after our own shutdown. */
  | "EPIPE"
  /** A SEQPACKET message larger than the peer's receive buffer. */
  | "EMSGSIZE"
  /** The peer broke the protocol (credit, op out of place). */
  | "EPROTO"
  /** The transport went away (reset, guest restart, device restart). */
  | "ENETRESET"
  /** The local side reset the connection, or the engine is shutting down. */
  | "ECONNABORTED"
  /** No local port or connection slot left. */
  | "EADDRNOTAVAIL"
  /** The socket type is not negotiated with the peer, or not supported. */
  | "ESOCKTNOSUPPORT"
  /** The port is already listened on. */
  | "EADDRINUSE"
  /** The transport is not running. */
  | "ENOTCONN";

/** A connection-level failure with an errno-style code. */
export class VsockError extends Error {
  override name = "VsockError";
  readonly code: VsockErrorCode;
  constructor(code: VsockErrorCode, message: string, options?: ErrorOptions) {
    super(`${code}: ${message}`, options);
    this.code = code;
  }
}
