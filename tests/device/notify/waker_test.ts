/**
 * The waker's worker: it reports watched words that change, and the main
 * thread's activity cuts its idle sleep short, but only then (a worker in
 * its short phase is not woken on every turn: that cost the round trip).
 */
import "../../_support/ffi.ts";
import { assert, assertEquals } from "../../../dev_deps.ts";
import { Region } from "../../../device/shm/region.ts";
import { type BackoffOptions, Waker } from "../../../device/notify/waker.ts";
import { EventFd } from "../../../device/notify/eventfd.ts";

const WORD = 64;

/**
 * Sleeps of 20 s after a minute of spinning: a change is seen in time only
 * while the worker spins or compares with an older snapshot.
 */
const SPIN_ONLY: BackoffOptions = {
  spinMs: 60_000,
  shortSleepMs: 20_000,
  shortPhaseMs: 60_000,
  idleSleepMs: 20_000,
};

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

/**
 * Runs `fn` with a waker (over `waker` or a new 4 KiB region) that watches
 * `words` consecutive words from WORD, once its worker watches them; closes
 * it after, and returns it.
 */
async function withWaker(
  fn: (waker: Waker) => Promise<void>,
  o: { backoff?: Partial<BackoffOptions>; words?: number; waker?: Waker } = {},
): Promise<Waker> {
  const waker = o.waker ?? new Waker(Region.alloc(4096), o.backoff);
  try {
    waker.watch(
      Array.from(
        { length: o.words ?? 1 },
        (_, i) => ({ offset: WORD + 4 * i, width: 4 as const }),
      ),
    );
    await watching(waker);
    await fn(waker);
  } finally {
    await waker.close();
  }
  return waker;
}

/** Changes WORD to `value` while a wait is pending; expects "changed". */
async function changeSeen(waker: Waker, value: number, ms = 10_000) {
  const woke = waker.wait(ms);
  waker.region.store32(WORD, value);
  assertEquals(await woke, "changed");
}

Deno.test("a waker reports a watched word that changes", async () => {
  await withWaker((waker) => changeSeen(waker, 1));
});

Deno.test("activity() ends the worker's idle sleep, so the next change is seen at once, not after the idle interval", async () => {
  // A 20 s idle interval: without the wake-up the change below would wait
  // for it and the wait would time out instead.
  const backoff = {
    spinMs: 0,
    shortSleepMs: 0.1,
    shortPhaseMs: 300,
    idleSleepMs: 20_000,
  };
  await withWaker(async (waker) => {
    await sleep(600); // past the short phase: the worker is in its long sleep
    waker.activity();
    await sleep(50); // the worker is polling again
    const started = performance.now();
    await changeSeen(waker, 1, 5_000);
    assert(performance.now() - started < 5_000);
  }, { backoff });
});

Deno.test("a change during the worker's idle sleep is seen at the end of that sleep", async () => {
  const backoff = {
    spinMs: 0,
    shortSleepMs: 0.1,
    shortPhaseMs: 50,
    idleSleepMs: 200,
  };
  await withWaker(async (waker) => {
    await sleep(300);
    await changeSeen(waker, 7, 5_000);
  }, { backoff });
});

Deno.test("the worker wakes the main thread through the wake socket, not postMessage", async () => {
  const waker = await withWaker(async (waker) => {
    // The worker has connected; this thread's accept may still be due.
    for (let i = 0; i < 100 && waker.wakeChannel !== "socket"; i++) {
      await sleep(50);
    }
    assertEquals(waker.wakeChannel, "socket");
    for (let v = 1; v <= 20; v++) await changeSeen(waker, v);
  });
  assertEquals(waker.wakeChannel, "message");
});

Deno.test("in the spin phase a change is seen at once, not after a sleep", async () => {
  await withWaker(async (waker) => {
    for (let v = 1; v <= 3; v++) await changeSeen(waker, v);
  }, { backoff: SPIN_ONLY });
});

Deno.test("a muted word's changes do not wake; once unmuted, its next change does", async () => {
  await withWaker(async (waker) => {
    waker.mute(0b10);
    let woke = waker.wait(300);
    waker.region.store32(WORD + 4, 1);
    assertEquals(await woke, "timeout");
    waker.mute(0);
    woke = waker.wait(10_000);
    waker.region.store32(WORD + 4, 2);
    assertEquals(await woke, "changed");
  }, { words: 2 });
});

Deno.test("a change made while the main thread was busy is reported by its next wait", async () => {
  // Only the parked worker's comparison with its snapshot from before can
  // report the change before the 20 s sleep ends.
  await withWaker(async (waker) => {
    await sleep(100); // the worker parks: nobody waits
    waker.region.store32(WORD, 5);
    await sleep(100);
    assertEquals(await waker.wait(10_000), "changed");
  }, { backoff: SPIN_ONLY });
});

Deno.test("a change made after watch() but before the worker loads the list is reported", async () => {
  // The worker starts on its own time (milliseconds, seconds on a cold
  // module cache): a word that changes before it loads the list must still
  // count as a change against the values watch() saw. Taken as the
  // worker's baseline instead, it was lost, and a runner slept through it
  // until its heartbeat (the quiet_queues tests' flake).
  const waker = new Waker(Region.alloc(4096), SPIN_ONLY);
  try {
    waker.watch([{ offset: WORD, width: 4 }]);
    assert(!waker.watching, "the worker cannot have loaded the list yet");
    waker.region.store32(WORD, 7);
    await watching(waker);
    assertEquals(await waker.wait(5_000), "changed");
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
  await withWaker(async (waker) => {
    assertEquals(waker.wakeChannel, "message");
    await changeSeen(waker, 1);
  }, { waker });
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

Deno.test("a readable io descriptor wakes a worker in its long sleep, and the worker leaves it to the main thread", async () => {
  // 20 s sleeps: only the descriptor can end this wait in time. It stands
  // for the ring loop's epoll set, which the main thread clears itself.
  const backoff = {
    spinMs: 0,
    shortSleepMs: 20_000,
    shortPhaseMs: 0,
    idleSleepMs: 20_000,
  };
  const io = EventFd.create();
  const waker = new Waker(Region.alloc(4096), backoff);
  try {
    waker.watch([{ offset: WORD, width: 4 }], [], io.fd);
    await watching(waker);
    await sleep(100); // the worker is in its long sleep
    const woke = waker.wait(10_000);
    io.signal(3n);
    assertEquals(await woke, "changed");
    assertEquals(io.drain(), 3n, "the worker did not read the descriptor");
  } finally {
    await waker.close();
    await io.close();
  }
});

/** Voluntary context switches of this process's waker worker threads. */
function workerSwitches(): number {
  let n = 0;
  for (const t of Deno.readDirSync("/proc/self/task")) {
    const dir = `/proc/self/task/${t.name}`;
    try {
      if (!/^worker-\d+$/.test(Deno.readTextFileSync(`${dir}/comm`).trim())) {
        continue;
      }
      const status = Deno.readTextFileSync(`${dir}/status`);
      n += Number(/\nvoluntary_ctxt_switches:\s+(\d+)/.exec(status)?.[1]);
    } catch {
      // The thread ended meanwhile.
    }
  }
  return n;
}

Deno.test("a worker parked while the main thread is busy sleeps until it is needed, not once per idle interval", async () => {
  // The ring loops' back-off: the worker polls every 10 ms when idle. While
  // the main thread is busy (it never waits here) the worker parks, and only
  // the main thread's next wait should wake it: parked for the idle
  // interval, it woke about fifty times in these 500 ms.
  await withWaker(async (waker) => {
    await sleep(100); // the worker parks: nobody waits
    const before = workerSwitches();
    await sleep(500);
    const woke = workerSwitches() - before;
    assert(woke < 10, `the parked worker woke ${woke} times in 500 ms`);
    // And it still reports a change at once when the main thread waits.
    await changeSeen(waker, 9, 5_000);
  }, { backoff: { spinMs: 0 } });
});
