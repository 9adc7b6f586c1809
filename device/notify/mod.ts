/**
 * Doorbells between ivsock and QEMU: Linux eventfds, and a server for
 * QEMU's ivshmem protocol that hands the shared memory and the eventfds to
 * `ivshmem-doorbell` devices, with ivsock as peer 0.
 *
 * @module
 */

export * from "./eventfd.ts";
export * from "./ivshmem_client.ts";
export * from "./ivshmem_server.ts";
