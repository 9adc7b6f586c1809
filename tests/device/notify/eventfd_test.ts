import "../../_support/ffi.ts";
import { assert, assertEquals, assertThrows } from "../../../dev_deps.ts";
import { EventFd } from "../../../device/notify/eventfd.ts";
import {
  cString,
  F_DUPFD_CLOEXEC,
  libc,
  O_CLOEXEC,
  O_RDWR,
} from "../../../device/shm/_libc.ts";

Deno.test("EventFd.wait() resolves true once signalled, and drain() takes the count", async () => {
  await using efd = EventFd.create();
  const woke = efd.wait(2000);
  efd.signal();
  efd.signal(2n);
  assert(await woke);
  assertEquals(efd.drain(), 3n);
  assertEquals(efd.drain(), 0n);
});

Deno.test("EventFd.drain() returns 0n when nothing is pending", async () => {
  await using efd = EventFd.create();
  assertEquals(efd.drain(), 0n);
});

Deno.test("EventFd.wait() resolves false after its timeout, spanning several poll slices", async () => {
  await using efd = EventFd.create();
  const started = performance.now();
  assertEquals(await efd.wait(600), false);
  const took = performance.now() - started;
  assert(took >= 590 && took < 1500, `waited ${took} ms`);
  assertEquals(await efd.wait(0), false);
});

Deno.test("EventFd.wait() resolves true at once when a count is already pending", async () => {
  await using efd = EventFd.create();
  efd.signal();
  assert(await efd.wait(0));
  assertEquals(efd.drain(), 1n);
});

Deno.test("EventFd.close() ends a pending wait() with false and leaves no op running", async () => {
  const efd = EventFd.create();
  const waiting = efd.wait(60_000);
  const started = performance.now();
  await efd.close();
  assertEquals(await waiting, false);
  assert(performance.now() - started < 1000, "close() did not wait a slice");
  assertEquals(efd.fd, -1);
});

Deno.test("EventFd.close() is idempotent and later calls throw", async () => {
  const efd = EventFd.create();
  await Promise.all([efd.close(), efd.close()]);
  await efd.close();
  assert(efd.closed);
  assertThrows(() => efd.signal(), Error, "it is closed");
  assertThrows(() => efd.drain(), Error, "it is closed");
  assertThrows(() => efd.wait(0), Error, "it is closed");
});

Deno.test("EventFd.signal() rejects a count outside 1..2^64-2", async () => {
  await using efd = EventFd.create();
  assertThrows(() => efd.signal(0n), RangeError, "received 0");
  assertThrows(() => efd.signal(2n ** 64n - 1n), RangeError);
  assertThrows(() => efd.wait(-1), RangeError, "received -1");
  assertThrows(() => efd.wait(NaN), RangeError, "received NaN");
});

Deno.test("EventFd.fromFd() wraps a descriptor sharing the same counter", async () => {
  await using a = EventFd.create();
  const copy = libc().fcntl(a.fd, F_DUPFD_CLOEXEC, 0);
  assert(copy >= 0);
  await using b = EventFd.fromFd(copy);
  const woke = b.wait(2000);
  a.signal(5n);
  assert(await woke);
  assertEquals(b.drain(), 5n);
  assertEquals(a.drain(), 0n);
});

Deno.test("EventFd.fromFd() refuses a descriptor that is not an eventfd", async () => {
  const file = await Deno.makeTempFile();
  try {
    const fd = libc().open(cString(file), O_RDWR | O_CLOEXEC, 0);
    try {
      assertThrows(() => EventFd.fromFd(fd), Error, `it is ${file}`);
    } finally {
      libc().close(fd);
    }
  } finally {
    await Deno.remove(file);
  }
  assertThrows(() => EventFd.fromFd(-1), TypeError, "received -1");
  assertThrows(() => EventFd.fromFd(1_000_000), Error, "it is not open");
});
