/**
 * Test-only stand-ins for `@std/assert`, with the same names and signatures,
 * re-exported by bare name so that a move to JSR is a change to this file
 * alone.
 *
 * @module
 */

export {
  assert,
  assertEquals,
  assertMatch,
  assertNotEquals,
  assertRejects,
  assertStrictEquals,
  assertThrows,
} from "./tests/_support/assert.ts";
