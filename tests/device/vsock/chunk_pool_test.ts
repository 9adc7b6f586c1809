/**
 * The pool of received-data buffers: large chunks reuse buffers handed
 * back, in the smallest size that holds them; small ones never come from
 * it, nothing foreign or twice-given enters it, and what waits in it is
 * bounded.
 */
import { assert, assertEquals } from "../../../dev_deps.ts";
import {
  allocChunk,
  freeBytes,
  freeChunks,
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

Deno.test("small chunks and buffers made elsewhere stay out of the pool", () => {
  const small = allocChunk(4096);
  assertEquals(small.buffer.byteLength, 4096);
  const before = freeChunks();
  recycleChunk(small);
  recycleChunk(new Uint8Array(POOLED_BYTES));
  assertEquals(freeChunks(), before);
});

Deno.test("allocChunk() gives the smallest pooled size that holds the request, never twice its bytes or more", () => {
  const KiB = 1024;
  const sizes = [32 * KiB, 64 * KiB, 64 * KiB + 1, 128 * KiB, 128 * KiB + 1];
  const chunks = [...sizes, POOLED_BYTES].map((n) => allocChunk(n));
  assertEquals(chunks.map((c) => c.buffer.byteLength), [
    64 * KiB,
    64 * KiB,
    128 * KiB,
    128 * KiB,
    POOLED_BYTES,
    POOLED_BYTES,
  ]);
  for (const c of chunks) assert(c.buffer.byteLength <= 2 * c.length);
  // A 64 KiB buffer handed back is not given out for a larger request.
  recycleChunk(chunks[1]!);
  const big = allocChunk(200 * KiB);
  assert(big.buffer !== chunks[1]!.buffer);
  assertEquals(allocChunk(40 * KiB).buffer, chunks[1]!.buffer);
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
