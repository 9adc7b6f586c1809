/**
 * The vsock protocol engine: connections with credit flow control and
 * half-close, listeners, and the demultiplexer, for both roles.
 *
 * @module
 */

export * from "./constants.ts";
export * from "./credit.ts";
export * from "./errors.ts";
export * from "./vsock_message.ts";
export * from "./connection.ts";
export * from "./listener.ts";
export * from "./engine.ts";
export * from "./transport_ports.ts";
