import { assert, assertEquals, assertThrows } from "../../../dev_deps.ts";
import "../../_support/ffi.ts";
import { mapFile, ShmError } from "../../../device/shm/shm_file.ts";
import { exists } from "../../_support/exists.ts";

function shmPath(name: string): string {
  return `/dev/shm/ivsock-test-${name}-${Deno.pid}`;
}

Deno.test("mapFile() creates a file whose two mappings share memory", () => {
  const path = shmPath("share");
  const a = mapFile(path, { mode: "create", size: 65536 });
  try {
    assert(a.created);
    assertEquals(Deno.statSync(path).size, 65536);
    const b = mapFile(path);
    try {
      assert(!b.created);
      a.region.store32(4096, 0x12345678);
      assertEquals(b.region.load32(4096), 0x12345678);
      b.region.span(10, 3).set([7, 8, 9]);
      assertEquals([...a.region.span(10, 3)], [7, 8, 9]);
    } finally {
      b.close();
    }
    assert(
      exists(path),
      "closing a mapping that did not create the file keeps it",
    );
  } finally {
    a.close({ remove: true });
  }
  assert(!exists(path));
});

Deno.test("mapFile() opens an existing file in create mode without truncating it", () => {
  const path = shmPath("reopen");
  const a = mapFile(path, { mode: "create", size: 8192 });
  try {
    a.region.setU32(0, 0xabcdef01);
    const b = mapFile(path, { mode: "create", size: 8192 });
    try {
      assert(!b.created);
      assertEquals(b.region.getU32(0), 0xabcdef01);
    } finally {
      b.close();
    }
  } finally {
    a.close({ remove: true });
  }
});

Deno.test("MappedFile.close() detaches the region before unmapping it", () => {
  const path = shmPath("detach");
  const m = mapFile(path, { mode: "create", size: 4096 });
  const view = m.region.span(0, 64);
  m.close({ remove: true });
  assertEquals(view.length, 0);
  assertThrows(() => m.region.getU8(0), RangeError);
  m.close(); // idempotent
});

Deno.test("mapFile() rejects an existing file whose size is not a power of two and leaves it alone", () => {
  const path = shmPath("odd");
  Deno.writeFileSync(path, new Uint8Array(5000));
  try {
    assertThrows(() => mapFile(path), RangeError, "received 5000");
    assertEquals(Deno.statSync(path).size, 5000);
  } finally {
    Deno.removeSync(path);
  }
});

Deno.test("mapFile() rejects an existing file of another size than asked", () => {
  const path = shmPath("size");
  Deno.writeFileSync(path, new Uint8Array(8192));
  try {
    assertThrows(
      () => mapFile(path, { mode: "create", size: 16384 }),
      ShmError,
      "holds 8192 bytes, expected 16384",
    );
    assertEquals(Deno.statSync(path).size, 8192);
  } finally {
    Deno.removeSync(path);
  }
});

Deno.test("mapFile() names the path and the errno when a file cannot be opened", () => {
  const err = assertThrows(
    () =>
      mapFile("/dev/shm/no-such-dir/ivsock", { mode: "create", size: 4096 }),
    ShmError,
  );
  assertEquals(err.code, "ENOENT");
  assert(err.message.includes("/dev/shm/no-such-dir/ivsock"), err.message);
  const missing = assertThrows(() => mapFile(shmPath("missing")), ShmError);
  assertEquals(missing.code, "ENOENT");
});

Deno.test("mapFile() refuses a size that is not a power of two before creating anything", () => {
  const path = shmPath("badsize");
  assertThrows(
    () => mapFile(path, { mode: "create", size: 5000 }),
    RangeError,
    "received 5000",
  );
  assert(!exists(path));
});
