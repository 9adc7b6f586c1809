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

/**
 * Waits until the worker watches the current list. Its first start can take
 * seconds on a cold module cache (Deno compiles it), so a fixed sleep is not
 * enough.
 */
async function watching(waker: Waker): Promise<void> {
  for (let i = 0; i < 600 && !waker.watching; i++) await sleep(50);
  assert(waker.watching, "the worker took the watch list within 30 s");
}

Deno.test("a waker reports a watched word that changes", async () => {
  const region = Region.alloc(4096);
  const waker = new Waker(region);
  try {
    waker.watch([{ offset: WORD, width: 4 }]);
    await watching(waker);
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
    await watching(waker);
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
    await watching(waker);
    await sleep(300);
    const woke = waker.wait(5_000);
    region.store32(WORD, 7);
    assertEquals(await woke, "changed");
  } finally {
    await waker.close();
  }
});

Deno.test("the worker wakes the main thread through the wake socket, not postMessage", async () => {
  const region = Region.alloc(4096);
  const waker = new Waker(region);
  try {
    waker.watch([{ offset: WORD, width: 4 }]);
    await watching(waker);
    // The worker has connected; this thread's accept may still be due.
    for (let i = 0; i < 100 && waker.wakeChannel !== "socket"; i++) {
      await sleep(50);
    }
    assertEquals(waker.wakeChannel, "socket");
    for (let v = 1; v <= 20; v++) {
      const woke = waker.wait(10_000);
      region.store32(WORD, v);
      assertEquals(await woke, "changed");
    }
  } finally {
    await waker.close();
  }
  assertEquals(waker.wakeChannel, "message");
});

Deno.test("in the spin phase a change is seen at once, not after a sleep", async () => {
  const region = Region.alloc(4096);
  // Sleeps of 20 s: a change is seen in time only if the worker spins.
  const waker = new Waker(region, {
    spinMs: 60_000,
    shortSleepMs: 20_000,
    shortPhaseMs: 60_000,
    idleSleepMs: 20_000,
  });
  try {
    waker.watch([{ offset: WORD, width: 4 }]);
    await watching(waker);
    for (let v = 1; v <= 3; v++) {
      const woke = waker.wait(10_000);
      region.store32(WORD, v);
      assertEquals(await woke, "changed");
    }
  } finally {
    await waker.close();
  }
});

Deno.test("a muted word's changes do not wake; once unmuted, its next change does", async () => {
  const region = Region.alloc(4096);
  const waker = new Waker(region);
  try {
    waker.watch([{ offset: WORD, width: 4 }, { offset: WORD + 4, width: 4 }]);
    await watching(waker);
    waker.mute(0b10);
    let woke = waker.wait(300);
    region.store32(WORD + 4, 1);
    assertEquals(await woke, "timeout");
    waker.mute(0);
    woke = waker.wait(10_000);
    region.store32(WORD + 4, 2);
    assertEquals(await woke, "changed");
  } finally {
    await waker.close();
  }
});

Deno.test("a change made while the main thread was busy is reported by its next wait", async () => {
  const region = Region.alloc(4096);
  // A 20 s sleep after the spin: only the parked worker's comparison with
  // its snapshot from before can report the change in time.
  const waker = new Waker(region, {
    spinMs: 60_000,
    shortSleepMs: 20_000,
    shortPhaseMs: 60_000,
    idleSleepMs: 20_000,
  });
  try {
    waker.watch([{ offset: WORD, width: 4 }]);
    await watching(waker);
    await sleep(100); // the worker parks: nobody waits
    region.store32(WORD, 5);
    await sleep(100);
    assertEquals(await waker.wait(10_000), "changed");
  } finally {
    await waker.close();
  }
});

Deno.test("without a writable temporary directory the worker wakes the main thread by postMessage", async () => {
  const tmp = Deno.env.get("TMPDIR");
  Deno.env.set("TMPDIR", "/nonexistent/ivsock-no-tmp");
  let waker: Waker;
  try {
    waker = new Waker(Region.alloc(4096));
  } finally {
    if (tmp === undefined) Deno.env.delete("TMPDIR");
    else Deno.env.set("TMPDIR", tmp);
  }
  try {
    waker.watch([{ offset: WORD, width: 4 }]);
    await watching(waker);
    assertEquals(waker.wakeChannel, "message");
    const woke = waker.wait(10_000);
    waker.region.store32(WORD, 1);
    assertEquals(await woke, "changed");
  } finally {
    await waker.close();
  }
});

Deno.test("a process that exits before its worker connects leaves no wake socket behind", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "ivsock-test-waker-tmp-" });
  try {
    const waker = new URL("../../../device/notify/waker.ts", import.meta.url);
    const region = new URL("../../../device/shm/region.ts", import.meta.url);
    const code = `
      const { Waker } = await import(${JSON.stringify(waker.href)});
      const { Region } = await import(${JSON.stringify(region.href)});
      new Waker(Region.alloc(4096));
      Deno.exit(0);
    `;
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["eval", code],
      env: { TMPDIR: tmp },
      stdout: "null",
      stderr: "piped",
    }).output();
    assertEquals(out.code, 0, new TextDecoder().decode(out.stderr));
    assertEquals(await Array.fromAsync(Deno.readDir(tmp)), []);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});
