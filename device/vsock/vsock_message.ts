/**
 * A SEQPACKET message: the bytes of one message, plus whether it also ended
 * a record (MSG_EOR, the SEQ_EOR flag). Being a Uint8Array, it goes wherever
 * bytes go (a WebSocket send, a TCP write) and the flag rides along.
 *
 * @module
 */

/** One SEQPACKET message. */
export class VsockMessage extends Uint8Array {
  /** The sender marked the end of a record here. */
  eor = false;

  /** A message holding a copy of `bytes`. */
  static copyOf(bytes: Uint8Array, eor = false): VsockMessage {
    const m = new VsockMessage(bytes.length);
    m.set(bytes);
    m.eor = eor;
    return m;
  }
}
