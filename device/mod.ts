/**
 * The virtio-vsock device model, both roles, with no third-party code:
 * the shared region, split virtqueues, and vsock packets with mergeable
 * receive buffers.
 *
 * @module
 */

export * from "./virtio.ts";
export * from "./shm/region.ts";
export * from "./shm/shm_file.ts";
export * from "./virtqueue/split_ring.ts";
export * from "./virtqueue/event_idx.ts";
export * from "./virtqueue/segments.ts";
export * from "./virtqueue/descriptor_chain.ts";
export * from "./virtqueue/device_queue.ts";
export * from "./virtqueue/driver_queue.ts";
export * from "./packets/header.ts";
export * from "./packets/inbound_packet.ts";
export * from "./packets/byte_ring.ts";
export * from "./packets/device_tx.ts";
export * from "./packets/device_rx.ts";
export * from "./packets/driver_tx.ts";
export * from "./packets/driver_rx.ts";
