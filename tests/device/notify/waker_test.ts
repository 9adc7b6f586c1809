/**
 * The waker's worker: it reports watched words that change, and the main
 * thread's activity cuts its idle sleep short, but only then (a worker in
 * its short phase is not woken on every turn: that cost the round trip).
 */
import { assert, assertEquals } from "../../../dev_deps.ts";
import { Region } from "../../../device/shm/region.ts";
import { Waker } from "../../../device/notify/waker.ts";

const WORD = 64;

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

Deno.test("a waker reports a watched word that changes", async () => {
  const region = Region.alloc(4096);
  const waker = new Waker(region);
  try {
    waker.watch([{ offset: WORD, width: 4 }]);
    await sleep(200); // the worker starts and takes its first snapshot
    const woke = waker.wait(10_000);
    region.store32(WORD, 1);
    assertEquals(await woke, "changed");
  } finally {
    await waker.close();
  }
});

Deno.test("activity() ends the worker's idle sleep, so the next change is seen at once, not after the idle interval", async () => {
  const region = Region.alloc(4096);
  // A 20 s idle interval: without the wake-up the change below would wait
  // for it and the wait would time out instead.
  const waker = new Waker(region, {
    spinMs: 0,
    shortSleepMs: 0.1,
    shortPhaseMs: 300,
    idleSleepMs: 20_000,
  });
  try {
    waker.watch([{ offset: WORD, width: 4 }]);
    await sleep(600); // past the short phase: the worker is in its long sleep
    waker.activity();
    await sleep(50); // the worker is polling again
    const started = performance.now();
    const woke = waker.wait(5_000);
    region.store32(WORD, 1);
    assertEquals(await woke, "changed");
    assert(performance.now() - started < 5_000);
  } finally {
    await waker.close();
  }
});

Deno.test("a change during the worker's idle sleep is seen at the end of that sleep", async () => {
  const region = Region.alloc(4096);
  const waker = new Waker(region, {
    spinMs: 0,
    shortSleepMs: 0.1,
    shortPhaseMs: 50,
    idleSleepMs: 200,
  });
  try {
    waker.watch([{ offset: WORD, width: 4 }]);
    await sleep(300);
    const woke = waker.wait(5_000);
    region.store32(WORD, 7);
    assertEquals(await woke, "changed");
  } finally {
    await waker.close();
  }
});
