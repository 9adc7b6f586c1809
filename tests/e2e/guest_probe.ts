/**
 * Runs inside the e2e guest (shipped in the initramfs by `build_guest.sh`):
 * finds the ivshmem PCI device, maps its shared-memory BAR through sysfs with
 * the project's own {@linkcode mapFile}, checks the bytes the host wrote and
 * writes a reply for the host to check.
 *
 *     deno run --allow-all tests/e2e/guest_probe.ts EXPECT_HEX REPLY_HEX
 *
 * EXPECT_HEX must be found at offset {@linkcode EXPECT_OFFSET}; REPLY_HEX is
 * written at {@linkcode REPLY_OFFSET}. Exits 0 on success, 1 with a message
 * that names what was expected and what was found otherwise. Everything it
 * prints is prefixed `guest_probe:` so the host can pick it out of the
 * console.
 *
 * It imports nothing through `deps.ts`: the guest has no network, so any
 * `npm:` import would fail to resolve there.
 *
 * @module
 */

import { mapFile } from "../../device/shm/shm_file.ts";

/** Where the host's pattern sits in the shared region. */
export const EXPECT_OFFSET = 0;
/** Where the guest writes its reply (the next page, so the two never share
 * a cache line or a page). */
export const REPLY_OFFSET = 4096;

const IVSHMEM_VENDOR = "0x1af4";
const IVSHMEM_DEVICE = "0x1110";
const PCI_DEVICES = "/sys/bus/pci/devices";

/** PCI command register offset in config space, and its memory-space bit. */
const PCI_COMMAND = 4;
const PCI_COMMAND_MEMORY = 0x2;

function say(message: string): void {
  console.log(`guest_probe: ${message}`);
}

function fromHex(text: string, what: string): Uint8Array {
  if (!/^(?:[0-9a-f]{2})+$/i.test(text)) {
    throw new Error(
      `Expected ${what} as an even-length hex string, got ${
        JSON.stringify(text)
      }`,
    );
  }
  return Uint8Array.from(
    text.match(/../g)!,
    (pair) => Number.parseInt(pair, 16),
  );
}

function toHex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function readSysfs(path: string): string {
  return Deno.readTextFileSync(path).trim();
}

/** The sysfs directories of every ivshmem device, in bus order. */
function findIvshmem(): string[] {
  const found: string[] = [];
  for (const entry of Deno.readDirSync(PCI_DEVICES)) {
    const dir = `${PCI_DEVICES}/${entry.name}`;
    if (
      readSysfs(`${dir}/vendor`) === IVSHMEM_VENDOR &&
      readSysfs(`${dir}/device`) === IVSHMEM_DEVICE
    ) {
      found.push(dir);
    }
  }
  return found.sort();
}

/**
 * Makes sure the BAR decodes. The firmware normally leaves memory decoding
 * on, but no driver owns the device, so nothing else guarantees it; writing
 * `enable` asks the PCI core to switch it on.
 */
function ensureMemoryDecoding(dir: string): void {
  const config = Deno.readFileSync(`${dir}/config`);
  const command = config[PCI_COMMAND]! | (config[PCI_COMMAND + 1]! << 8);
  if ((command & PCI_COMMAND_MEMORY) !== 0) {
    say(`memory decoding already on (command=0x${command.toString(16)})`);
    return;
  }
  say(`memory decoding off (command=0x${command.toString(16)}); enabling`);
  Deno.writeTextFileSync(`${dir}/enable`, "1");
}

function main(args: string[]): number {
  if (args.length !== 2) {
    throw new Error(
      `Expected two arguments (EXPECT_HEX REPLY_HEX), got ${args.length}`,
    );
  }
  const expected = fromHex(args[0]!, "EXPECT_HEX");
  const reply = fromHex(args[1]!, "REPLY_HEX");
  const uptime = readSysfs("/proc/uptime").split(" ")[0];
  say(
    `deno ${Deno.version.deno} up ${
      performance.now().toFixed(0)
    } ms after exec, guest uptime ${uptime} s`,
  );

  const devices = findIvshmem();
  if (devices.length !== 1) {
    throw new Error(
      `Expected one ivshmem device (${IVSHMEM_VENDOR}:${IVSHMEM_DEVICE}) under ${PCI_DEVICES}, found ${devices.length}`,
    );
  }
  const dir = devices[0]!;
  say(`found ${dir}`);
  ensureMemoryDecoding(dir);

  const mapped = mapFile(`${dir}/resource2`);
  try {
    const region = mapped.region;
    say(`mapped ${mapped.path}: ${region.size} bytes`);
    const seen = region.span(EXPECT_OFFSET, expected.length).slice();
    if (toHex(seen) !== toHex(expected)) {
      say(
        `expected ${toHex(expected)} at offset ${EXPECT_OFFSET}, found ${
          toHex(seen)
        }`,
      );
      return 1;
    }
    say(`pattern of ${expected.length} bytes matches at ${EXPECT_OFFSET}`);
    region.span(REPLY_OFFSET, reply.length).set(reply);
    // Read back through the mapping: the BAR is mapped uncached, so this is
    // a real round trip to the device memory, not a cache hit.
    const back = region.span(REPLY_OFFSET, reply.length).slice();
    if (toHex(back) !== toHex(reply)) {
      say(
        `expected to read back ${toHex(reply)} at ${REPLY_OFFSET}, found ${
          toHex(back)
        }`,
      );
      return 1;
    }
    say(`reply of ${reply.length} bytes written at ${REPLY_OFFSET}`);
  } finally {
    mapped.close();
  }
  say(`OK after ${performance.now().toFixed(0)} ms`);
  return 0;
}

if (import.meta.main) {
  try {
    Deno.exit(main(Deno.args));
  } catch (err) {
    say(`error: ${err instanceof Error ? err.message : String(err)}`);
    Deno.exit(1);
  }
}
