/**
 * Finding the ivshmem PCI device in sysfs, and its doorbell register, against
 * a fake sysfs tree and an ordinary file standing in for BAR0.
 */
import "../_support/ffi.ts";
import { assertEquals, assertThrows } from "../../dev_deps.ts";
import {
  Doorbell,
  findIvshmemDevices,
  pickIvshmemDevice,
} from "../../guest/pci.ts";
import { RegisterWindow } from "../../device/shm/register_window.ts";

async function fakeSysfs(
  devices: Record<string, [string, string]>,
): Promise<string> {
  const root = await Deno.makeTempDir({ prefix: "ivsock-sysfs-" });
  for (const [address, [vendor, device]] of Object.entries(devices)) {
    await Deno.mkdir(`${root}/${address}`);
    await Deno.writeTextFile(`${root}/${address}/vendor`, `${vendor}\n`);
    await Deno.writeTextFile(`${root}/${address}/device`, `${device}\n`);
  }
  return root;
}

Deno.test("findIvshmemDevices() lists only vendor 1af4 / device 1110, in address order", async () => {
  const root = await fakeSysfs({
    "0000:00:05.0": ["0x1af4", "0x1110"],
    "0000:00:02.0": ["0x8086", "0x1237"],
    "0000:00:04.0": ["0x1af4", "0x1110"],
    "0000:00:03.0": ["0x1af4", "0x1041"], // virtio-net, same vendor
  });
  try {
    assertEquals(findIvshmemDevices(root).map((d) => d.address), [
      "0000:00:04.0",
      "0000:00:05.0",
    ]);
    assertEquals(
      findIvshmemDevices(root)[0]!.memory,
      `${root}/0000:00:04.0/resource2`,
    );
    assertEquals(
      findIvshmemDevices(root)[0]!.registers,
      `${root}/0000:00:04.0/resource0`,
    );
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("pickIvshmemDevice() takes the only device, or the one asked for, and says why it cannot", async () => {
  const one = await fakeSysfs({ "0000:00:04.0": ["0x1af4", "0x1110"] });
  const two = await fakeSysfs({
    "0000:00:04.0": ["0x1af4", "0x1110"],
    "0000:00:05.0": ["0x1af4", "0x1110"],
  });
  const none = await fakeSysfs({});
  try {
    assertEquals(pickIvshmemDevice("auto", one).address, "0000:00:04.0");
    assertEquals(
      pickIvshmemDevice("0000:00:05.0", two).address,
      "0000:00:05.0",
    );
    assertThrows(
      () => pickIvshmemDevice("auto", two),
      Error,
      "several ivshmem devices (0000:00:04.0, 0000:00:05.0)",
    );
    assertThrows(
      () => pickIvshmemDevice("auto", none),
      Error,
      "no ivshmem device (vendor 1af4, device 1110)",
    );
    assertThrows(
      () => pickIvshmemDevice("0000:00:09.0", one),
      Error,
      "no ivshmem device at 0000:00:09.0 (found: 0000:00:04.0)",
    );
  } finally {
    for (const r of [one, two, none]) await Deno.remove(r, { recursive: true });
  }
});

Deno.test("Doorbell writes (peer << 16) | vector at BAR0 offset 12 and reads IVPosition at 8", async () => {
  const bar0 = await Deno.makeTempFile({ prefix: "ivsock-bar0-" });
  const regs = new Uint8Array(256);
  new DataView(regs.buffer).setUint32(8, 5, true); // IVPosition
  await Deno.writeFile(bar0, regs);
  try {
    const bell = new Doorbell(bar0);
    assertEquals(bell.position, 5);
    bell.ring(0, 1);
    bell.ring(0x12345, 0x10002); // both fields are 16 bits wide
    bell.close();
    const after = new DataView((await Deno.readFile(bar0)).buffer);
    assertEquals(after.getUint32(12, true), (0x2345 << 16) | 0x0002);
  } finally {
    await Deno.remove(bar0);
  }
});

Deno.test("RegisterWindow allows only aligned 32-bit accesses inside the BAR", async () => {
  const bar0 = await Deno.makeTempFile({ prefix: "ivsock-bar0-" });
  await Deno.writeFile(bar0, new Uint8Array(256));
  try {
    const w = RegisterWindow.open(bar0);
    assertEquals(w.size, 256);
    assertThrows(() => w.read32(2), RangeError, "aligned 32-bit register");
    assertThrows(() => w.read32(256), RangeError, "inside 256 bytes");
    assertThrows(() => w.write32(-4, 1), RangeError);
    w.write32(252, 0xdeadbeef);
    assertEquals(w.read32(252), 0xdeadbeef);
    w.close();
    assertThrows(() => w.read32(0), RangeError, "closed");
    w.close(); // idempotent
  } finally {
    await Deno.remove(bar0);
  }
});
