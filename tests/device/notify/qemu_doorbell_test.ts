/**
 * IvshmemServer against a real QEMU `ivshmem-doorbell` device. QEMU runs
 * paused (-S) with no guest: the device reads the handshake at realize, and
 * the qtest protocol on stdio plays the guest's PCI accesses.
 */

import "../../_support/ffi.ts";
import { assert, assertEquals, assertMatch } from "../../../dev_deps.ts";
import { ProtocolClient } from "./_protocol_client.ts";
import { findQemu, QemuProcess } from "./_qemu.ts";
import { startServer } from "./_server_fixture.ts";

const qemu = findQemu();
if (qemu === undefined) {
  console.log(
    "qemu_doorbell_test: skipping, qemu-system-x86_64 is not on PATH (apt-get install qemu-system-x86)",
  );
}

const SHM_SIZE = 1 << 20;

/** PCI slot pinned for the device, so the qtest config accesses find it. */
const SLOT = 4;
/** Guest-physical addresses given to BAR0 (registers) and BAR1 (MSI-X),
 * below the IOAPIC in q35's 32-bit PCI hole. */
const BAR0 = 0xfe000000;
const BAR1 = 0xfe001000;
/** ivshmem BAR0 registers (ivshmem-spec.rst). */
const IV_POSITION = 8;
const DOORBELL = 12;
/** ivshmem's exclusive MSI-X BAR puts the PBA at half its 4 KiB. */
const PBA_OFFSET = 0x800;
const PCI_CAP_ID_MSIX = 0x11;
/** MSI-X Message Control: enable, and mask every vector (so a notify only
 * sets its pending bit, which the test can read). */
const MSIX_ENABLE_MASKED = 0xc000;

function qemuArgs(path: string, extra: string[]): string[] {
  return [
    "-machine",
    "q35",
    "-S",
    "-display",
    "none",
    "-nodefaults",
    "-no-user-config",
    "-chardev",
    `socket,path=${path},id=iv`,
    "-device",
    `ivshmem-doorbell,chardev=iv,vectors=2,addr=${SLOT}.0`,
    ...extra,
  ];
}

interface PciRegion {
  bar: number;
  size: number;
}
interface PciDevice {
  id: { vendor: number; device: number };
  regions: PciRegion[];
}

Deno.test({
  name:
    "QEMU's ivshmem-doorbell attaches to IvshmemServer with a power-of-two BAR2, and its exit is a disconnect",
  ignore: qemu === undefined,
  async fn() {
    await using f = await startServer("qemu", { vectors: 2, size: SHM_SIZE });
    await using vm = new QemuProcess(
      qemu!,
      qemuArgs(f.path, ["-qmp", "stdio"]),
    );
    assertEquals(await f.events.next("connect", 5000), {
      type: "connect",
      id: 1,
    });
    await vm.qmp("qmp_capabilities");
    const buses = await vm.qmp("query-pci") as { devices: PciDevice[] }[];
    const ivshmem = buses.flatMap((b) => b.devices).find((d) =>
      d.id.vendor === 0x1af4 && d.id.device === 0x1110
    );
    assert(ivshmem !== undefined, "the ivshmem device is on the bus");
    const bar2 = ivshmem.regions.find((r) => r.bar === 2);
    assertEquals(bar2?.size, SHM_SIZE, "BAR2 is the shm fd's st_size");
    assert(vm.running, "QEMU accepted the handshake and keeps running");
    const { stderr } = await vm.kill();
    assert(!/ivshmem/i.test(stderr), `QEMU complained: ${stderr}`);
    assertEquals(await f.events.next("disconnect", 5000), {
      type: "disconnect",
      id: 1,
    });
    assertEquals(f.server.clients, []);
  },
});

Deno.test({
  name:
    "A guest doorbell write of (0 << 16) | v wakes deviceVectors[v], and ring() sets the guest's MSI-X pending bit",
  ignore: qemu === undefined,
  async fn() {
    await using f = await startServer("qtest", { vectors: 2, size: SHM_SIZE });
    await using vm = new QemuProcess(
      qemu!,
      qemuArgs(f.path, ["-qtest", "stdio", "-qtest-log", "/dev/null"]),
    );
    await f.events.next("connect", 5000);
    const config = new PciConfig(vm, SLOT);
    assertEquals(await config.read32(0), 0x11101af4, "vendor and device");
    await config.write32(0x10, BAR0);
    await config.write32(0x14, BAR1);
    await config.write16(0x04, 0x2); // Command: memory space enable.
    assertEquals(
      Number(await vm.qtest(`readl ${BAR0 + IV_POSITION}`)),
      1,
      "IVPosition is the id the server gave",
    );

    // Guest to ivsock: the doorbell names peer 0 and vector 1.
    const woke = f.server.deviceVectors[1]!.wait(5000);
    await vm.qtest(`writel ${BAR0 + DOORBELL} ${(0 << 16) | 1}`);
    assert(await woke, "deviceVectors[1] woke");
    assertEquals(f.server.deviceVectors[1]!.drain(), 1n);
    assertEquals(f.server.deviceVectors[0]!.drain(), 0n);

    // ivsock to guest: with MSI-X enabled but masked, QEMU records vector 1
    // as pending instead of delivering it.
    const msix = await config.findCapability(PCI_CAP_ID_MSIX);
    await config.write16(msix + 2, MSIX_ENABLE_MASKED);
    assertEquals(Number(await vm.qtest(`readl ${BAR1 + PBA_OFFSET}`)), 0);
    assert(f.server.ring(1, 1));
    let pending = 0;
    for (let i = 0; i < 50 && pending === 0; i++) {
      // QEMU reads the eventfd in its main loop, a moment after the write.
      pending = Number(await vm.qtest(`readl ${BAR1 + PBA_OFFSET}`));
      if (pending === 0) await new Promise((r) => setTimeout(r, 20));
    }
    assertEquals(pending, 0b10, "vector 1 is pending");

    const { stderr } = await vm.kill();
    assert(!/ivshmem/i.test(stderr), `QEMU complained: ${stderr}`);
    await f.events.next("disconnect", 5000);
  },
});

Deno.test({
  name:
    "A QEMU refused beyond maxClients fails its device with an error instead of hanging",
  ignore: qemu === undefined,
  async fn() {
    await using f = await startServer("qemufull", {
      vectors: 2,
      maxClients: 1,
    });
    using first = ProtocolClient.connect(f.path);
    await first.handshake(2, 1);
    await using vm = new QemuProcess(qemu!, qemuArgs(f.path, []));
    assert(await vm.exitsWithin(5000), "QEMU gave up on the device");
    const { status, stderr } = await vm.kill();
    assertEquals(status.success, false);
    assertMatch(stderr, /ivshmem-doorbell.*server sent invalid ID message/);
    assertMatch(
      ((await f.events.next("log")) as { message: string }).message,
      /maxClients 1/,
    );
  },
});

/** Type 1 configuration accesses (ports 0xcf8/0xcfc) to bus 0, `slot`.0. */
class PciConfig {
  #vm: QemuProcess;
  #slot: number;
  constructor(vm: QemuProcess, slot: number) {
    this.#vm = vm;
    this.#slot = slot;
  }

  async #select(offset: number): Promise<number> {
    const address = (0x80000000 | (this.#slot << 11) | (offset & 0xfc)) >>> 0;
    await this.#vm.qtest(`outl 0xcf8 ${address}`);
    return 0xcfc + (offset & 3);
  }

  async read32(offset: number): Promise<number> {
    return Number(await this.#vm.qtest(`inl ${await this.#select(offset)}`));
  }

  async read8(offset: number): Promise<number> {
    return Number(await this.#vm.qtest(`inb ${await this.#select(offset)}`));
  }

  async write32(offset: number, value: number): Promise<void> {
    await this.#vm.qtest(`outl ${await this.#select(offset)} ${value}`);
  }

  async write16(offset: number, value: number): Promise<void> {
    await this.#vm.qtest(`outw ${await this.#select(offset)} ${value}`);
  }

  /** Offset of the capability with `id`, walking the list from 0x34. */
  async findCapability(id: number): Promise<number> {
    let at = await this.read8(0x34);
    for (let hops = 0; at !== 0 && hops < 48; hops++) {
      if (await this.read8(at) === id) return at;
      at = await this.read8(at + 1);
    }
    throw new Error(`No PCI capability 0x${id.toString(16)}`);
  }
}
