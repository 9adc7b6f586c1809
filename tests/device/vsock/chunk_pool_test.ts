/**
 * The pool of received-data buffers: large chunks reuse buffers handed
 * back, small ones never come from it, and nothing foreign or twice-given
 * enters it.
 */
import { assert, assertEquals } from "../../../dev_deps.ts";
import {
  allocChunk,
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
  const c = allocChunk(POOLED_BYTES / 2);
  assertEquals(c.buffer, a.buffer);
  assertEquals(c.length, POOLED_BYTES / 2);
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
