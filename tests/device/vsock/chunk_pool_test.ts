/**
 * The pool of received-data buffers: chunks reuse buffers handed back, in
 * the smallest power of two that holds them (from 64 bytes up), the last
 * handed back first; nothing foreign or twice-given enters it, and what
 * waits in it is bounded.
 */
import { assert, assertEquals } from "../../../dev_deps.ts";
import {
  allocChunk,
  freeBytes,
  freeChunks,
  MIN_POOLED,
  POOLED_BYTES,
  recycleChunk,
} from "../../../device/vsock/chunk_pool.ts";

Deno.test("allocChunk() reuses the buffer of a chunk handed back, and only then", () => {
  const a = allocChunk(POOLED_BYTES);
  const b = allocChunk(POOLED_BYTES - 100);
  assert(a.buffer !== b.buffer, "two live chunks never share a buffer");
  assertEquals([a.length, b.length], [POOLED_BYTES, POOLED_BYTES - 100]);
  const before = freeChunks();
  recycleChunk(a);
  recycleChunk(a); // a second hand-back must not make it free twice
  assertEquals(freeChunks(), before + 1);
  const c = allocChunk(POOLED_BYTES / 2 + 1);
  assertEquals(c.buffer, a.buffer);
  assertEquals(c.length, POOLED_BYTES / 2 + 1);
  const d = allocChunk(POOLED_BYTES);
  assert(d.buffer !== c.buffer, "a reused buffer is not given out again");
  recycleChunk(b);
  recycleChunk(c);
  recycleChunk(d);
});

Deno.test("small chunks are pooled too; buffers made elsewhere and larger than the largest size stay out", () => {
  const small = allocChunk(4096);
  assertEquals(small.buffer.byteLength, 4096);
  const before = freeChunks();
  recycleChunk(small);
  assertEquals(freeChunks(), before + 1);
  // A packet's payload from a 4 KiB rx buffer gets the same buffer back.
  const again = allocChunk(4052);
  assertEquals(again.buffer, small.buffer);
  assertEquals(again.length, 4052);
  recycleChunk(again);
  const afterOwn = freeChunks();
  recycleChunk(new Uint8Array(4096));
  recycleChunk(new Uint8Array(POOLED_BYTES));
  const huge = allocChunk(POOLED_BYTES + 1);
  assertEquals(huge.buffer.byteLength, POOLED_BYTES + 1);
  recycleChunk(huge);
  assertEquals(freeChunks(), afterOwn);
});

Deno.test("the buffer handed back last is given out first", () => {
  const a = allocChunk(1000);
  const b = allocChunk(1000);
  recycleChunk(a);
  recycleChunk(b);
  assertEquals(allocChunk(1000).buffer, b.buffer);
  assertEquals(allocChunk(1000).buffer, a.buffer);
});

Deno.test("allocChunk() gives the smallest pooled size that holds the request, never twice its bytes or more", () => {
  const KiB = 1024;
  const sizes = [
    1,
    MIN_POOLED,
    MIN_POOLED + 1,
    100,
    4052,
    4 * KiB,
    4 * KiB + 1,
    32 * KiB,
    64 * KiB,
    64 * KiB + 1,
    128 * KiB,
    128 * KiB + 1,
  ];
  const chunks = [...sizes, POOLED_BYTES].map((n) => allocChunk(n));
  assertEquals(chunks.map((c) => c.buffer.byteLength), [
    MIN_POOLED,
    MIN_POOLED,
    2 * MIN_POOLED,
    128,
    4 * KiB,
    4 * KiB,
    8 * KiB,
    32 * KiB,
    64 * KiB,
    128 * KiB,
    128 * KiB,
    POOLED_BYTES,
    POOLED_BYTES,
  ]);
  assertEquals(chunks.map((c) => c.length), [...sizes, POOLED_BYTES]);
  for (const c of chunks) {
    assert(c.buffer.byteLength <= Math.max(MIN_POOLED, 2 * c.length));
  }
  // A 64 KiB buffer handed back is not given out for a larger request.
  const chunk64 = chunks[8]!;
  recycleChunk(chunk64);
  const big = allocChunk(200 * KiB);
  assert(big.buffer !== chunk64.buffer);
  assertEquals(allocChunk(40 * KiB).buffer, chunk64.buffer);
  for (const c of [...chunks, big]) recycleChunk(c);
});

Deno.test("at most 4 MiB of each size wait in the pool, and one size cannot crowd out another", () => {
  const chunks = Array.from({ length: 40 }, () => allocChunk(POOLED_BYTES));
  const small = allocChunk(64 * 1024);
  for (const c of chunks) recycleChunk(c);
  // 40 buffers of 256 KiB would be 10 MiB; the pool fills to its bound and
  // leaves the rest to the collector.
  const big = freeBytes(POOLED_BYTES);
  assert(big <= 4 << 20, `${big} bytes free`);
  assert(big > (4 << 20) - POOLED_BYTES, `${big} bytes free`);
  // The full shelf of large buffers leaves room for a small one.
  const before = freeBytes(64 * 1024);
  recycleChunk(small);
  assertEquals(freeBytes(64 * 1024), before + 64 * 1024);
});

Deno.test("at most 64 buffers of each small size wait in the pool", () => {
  const chunks = Array.from({ length: 100 }, () => allocChunk(512));
  for (const c of chunks) recycleChunk(c);
  assertEquals(freeBytes(512), 64 * 512);
  const more = Array.from({ length: 64 }, () => allocChunk(512));
  assertEquals(freeBytes(512), 0);
  for (const c of more) recycleChunk(c);
});
