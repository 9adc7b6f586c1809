/**
 * Assertions with the signatures of `@std/assert`, built on `node:assert`,
 * so that tests read the same and a later move to JSR changes only
 * `dev_deps.ts`.
 *
 * @module
 */

import * as nodeAssert from "node:assert/strict";

/** Asserts `expr` is truthy. */
export function assert(expr: unknown, msg?: string): asserts expr {
  nodeAssert.ok(expr, msg);
}

/** Deep, strict equality. */
export function assertEquals<T>(actual: T, expected: T, msg?: string): void {
  // deepStrictEqual by name: Deno's node:assert/strict still compares
  // loosely in deepEqual (1 equals "1"), unlike Node's.
  nodeAssert.deepStrictEqual(actual, expected, msg);
}

/** `Object.is` equality. */
export function assertStrictEquals<T>(
  actual: T,
  expected: T,
  msg?: string,
): void {
  nodeAssert.strictEqual(actual, expected, msg);
}

/** Deep inequality. */
export function assertNotEquals<T>(actual: T, expected: T, msg?: string): void {
  nodeAssert.notDeepStrictEqual(actual, expected, msg);
}

/** `actual` matches `expected`. */
export function assertMatch(
  actual: string,
  expected: RegExp,
  msg?: string,
): void {
  nodeAssert.match(actual, expected, msg);
}

type ErrorClass<E extends Error> = abstract new (...args: never[]) => E;

/**
 * Asserts `fn` throws an instance of `ErrorClass` whose message includes
 * `msgIncludes`; returns the error.
 */
export function assertThrows<E extends Error = Error>(
  fn: () => unknown,
  ErrorClass?: ErrorClass<E>,
  msgIncludes?: string,
  msg?: string,
): E {
  try {
    fn();
  } catch (err) {
    return check(err, ErrorClass, msgIncludes, msg);
  }
  throw new nodeAssert.AssertionError({
    message: msg ?? "Expected function to throw",
  });
}

/** Async {@linkcode assertThrows}. */
export async function assertRejects<E extends Error = Error>(
  fn: () => PromiseLike<unknown>,
  ErrorClass?: ErrorClass<E>,
  msgIncludes?: string,
  msg?: string,
): Promise<E> {
  try {
    await fn();
  } catch (err) {
    return check(err, ErrorClass, msgIncludes, msg);
  }
  throw new nodeAssert.AssertionError({
    message: msg ?? "Expected promise to reject",
  });
}

function check<E extends Error>(
  err: unknown,
  ErrorClass: ErrorClass<E> | undefined,
  msgIncludes: string | undefined,
  msg: string | undefined,
): E {
  if (ErrorClass !== undefined && !(err instanceof ErrorClass)) {
    throw new nodeAssert.AssertionError({
      message: `${
        msg ? msg + ": " : ""
      }Expected error to be instance of "${ErrorClass.name}", but was "${
        (err as Error)?.constructor?.name
      }": ${(err as Error)?.message}`,
    });
  }
  if (
    msgIncludes !== undefined &&
    !(err instanceof Error && err.message.includes(msgIncludes))
  ) {
    throw new nodeAssert.AssertionError({
      message: `${
        msg ? msg + ": " : ""
      }Expected error message to include "${msgIncludes}", but got "${
        (err as Error)?.message
      }"`,
    });
  }
  return err as E;
}
