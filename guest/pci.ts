/**
 * Finding the ivshmem PCI device inside a Linux guest through sysfs, and
 * ringing its doorbell (QEMU `docs/specs/ivshmem-spec.rst`).
 *
 * ```text
 * vendor 0x1af4, device 0x1110
 * BAR0 (resource0): registers, 32-bit accesses: 8 IVPosition (our peer id),
 *                   12 Doorbell ((peer << 16) | vector)
 * BAR2 (resource2): the shared memory
 * ```
 *
 * @module
 */

import { RegisterWindow } from "../device/shm/register_window.ts";

const SYSFS = "/sys/bus/pci/devices";
export const IVSHMEM_VENDOR = 0x1af4;
export const IVSHMEM_DEVICE = 0x1110;
/** BAR0 register offsets. */
export const IVPOSITION = 8;
export const DOORBELL = 12;

/** An ivshmem device found in sysfs. */
export interface IvshmemDevice {
  /** PCI address, e.g. `0000:00:04.0`. */
  address: string;
  /** The shared memory: map it as the region. */
  memory: string;
  /** The registers. */
  registers: string;
}

/**
 * The ivshmem devices in `root` (sysfs by default), in address order.
 */
export function findIvshmemDevices(root = SYSFS): IvshmemDevice[] {
  const found: IvshmemDevice[] = [];
  let entries: Deno.DirEntry[];
  try {
    entries = [...Deno.readDirSync(root)];
  } catch {
    return [];
  }
  for (const e of entries) {
    const dir = `${root}/${e.name}`;
    try {
      const vendor = parseInt(
        Deno.readTextFileSync(`${dir}/vendor`).trim(),
        16,
      );
      const device = parseInt(
        Deno.readTextFileSync(`${dir}/device`).trim(),
        16,
      );
      if (vendor === IVSHMEM_VENDOR && device === IVSHMEM_DEVICE) {
        found.push({
          address: e.name,
          memory: `${dir}/resource2`,
          registers: `${dir}/resource0`,
        });
      }
    } catch {
      // Not a readable PCI device entry.
    }
  }
  return found.sort((a, b) => a.address.localeCompare(b.address));
}

/**
 * Picks the device at `address`, or the only one when `address` is "auto".
 *
 * @throws {Error} when none, or more than one without an address, is found.
 */
export function pickIvshmemDevice(
  address: string,
  root = SYSFS,
): IvshmemDevice {
  const all = findIvshmemDevices(root);
  if (address !== "auto") {
    const d = all.find((x) => x.address === address);
    if (d === undefined) {
      throw new Error(
        `no ivshmem device at ${address} (found: ${
          all.map((x) => x.address).join(", ") || "none"
        })`,
      );
    }
    return d;
  }
  if (all.length === 0) {
    throw new Error(
      `no ivshmem device (vendor 1af4, device 1110) under ${root}: is the VM started with -device ivshmem-plain or ivshmem-doorbell?`,
    );
  }
  if (all.length > 1) {
    throw new Error(
      `several ivshmem devices (${
        all.map((x) => x.address).join(", ")
      }): choose one with --pci ADDRESS`,
    );
  }
  return all[0]!;
}

/** The doorbell of one ivshmem device. */
export class Doorbell {
  #regs: RegisterWindow;

  constructor(registers: string) {
    this.#regs = RegisterWindow.open(registers);
  }

  /** Our peer id (0 on ivshmem-plain, which has no doorbell). */
  get position(): number {
    return this.#regs.read32(IVPOSITION);
  }

  /** Interrupts `peer` on `vector` (QEMU keeps only the low 8 bits of it). */
  ring(peer: number, vector: number): void {
    this.#regs.write32(DOORBELL, ((peer & 0xffff) << 16) | (vector & 0xffff));
  }

  close(): void {
    this.#regs.close();
  }
}
