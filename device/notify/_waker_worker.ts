/**
 * The waker's worker thread. It watches a few ring words (and, in doorbell
 * mode, eventfds; and the ring loop's epoll set of sockets) and tells the
 * main thread when one changes, so that the main thread can sleep in its
 * event loop without polling memory itself.
 *
 * Why a worker: on the main thread, `setTimeout` sleeps at least ~2 ms and
 * nonblocking FFI calls cost ~150 us each; Deno's event loop cannot wait
 * for a word in memory. A worker can block (Atomics.wait, ppoll(2))
 * without touching the main event loop, and its byte on the wake socket
 * wakes the main thread in ~15 us. The ring loop spins on the main thread
 * itself while traffic flows; the worker covers the quiet time after.
 * docs/transport.md has the measurements.
 *
 * The loop never yields to this worker's event loop; everything after the
 * start-up message arrives through the shared control buffer.
 *
 * @module
 */

/// <reference lib="deno.worker" />

import {
  CTL_ACTIVITY,
  CTL_CONTROL,
  CTL_DEEP,
  CTL_FDS,
  CTL_IO_FD,
  CTL_LOADED,
  CTL_MUTED,
  CTL_PARKED,
  CTL_PENDING,
  CTL_SEEN,
  CTL_SEEN_SET,
  CTL_SLEEP,
  CTL_STOP,
  CTL_TABLE,
  CTL_VERSION,
  CTL_WAITING,
  CTL_WORDS,
  MAX_WORDS,
  sleepFor,
  type WakerInit,
} from "./_waker_protocol.ts";
import { connectUnix } from "./_unix_socket.ts";
import { cString, libc as sharedLibc, MSG_NOSIGNAL } from "../shm/_libc.ts";

/**
 * Longest a parked worker sleeps. The main thread notifies it when it starts
 * to wait, and `watch()` and `close()` do too, so this is only a safety net.
 * Parking for the idle interval instead (10 ms when polling) woke each
 * worker 160-185 times a second during a ping-pong, for 0.8-1.2% of a core
 * each; now 50-140 times (the loop's own sleeps, about 20 a second, each
 * followed by the worker's short polls), for 0.5-0.6% (docs/performance.md).
 */
const PARKED_MS = 1000;

self.onmessage = (e: MessageEvent<WakerInit>) => {
  self.onmessage = null;
  run(e.data);
};

/**
 * A non-blocking connection to the main thread's wake socket, or -1. Once
 * connected it removes the socket and its private directory: nobody else
 * connects, and a process that dies before its main thread gets to it
 * leaves nothing behind in the temporary directory.
 */
function connectWakeSocket(path: string): number {
  let fd: number;
  try {
    fd = connectUnix(path);
  } catch {
    return -1; // the worker falls back to postMessage
  }
  sharedLibc().unlink(cString(path));
  sharedLibc().rmdir(cString(path.slice(0, path.lastIndexOf("/"))));
  return fd;
}

function run(init: WakerInit): void {
  const libc = Deno.dlopen("libc.so.6", {
    ppoll: {
      parameters: ["buffer", "u64", "buffer", "pointer"],
      result: "i32",
    },
    read: { parameters: ["i32", "buffer", "u64"], result: "i64" },
    prctl: { parameters: ["i32", "u64", "u64", "u64", "u64"], result: "i32" },
    send: { parameters: ["i32", "buffer", "u64", "i32"], result: "i64" },
    sched_yield: { parameters: [], result: "i32" },
  });
  // PR_SET_TIMERSLACK (29), for this thread only: Linux lets a timed sleep
  // overrun by the slack (50 us by default), which would turn our 100 us
  // polls into 150 us ones.
  libc.symbols.prctl(29, 1000n, 0n, 0n, 0n);
  const ctl = new Int32Array(init.control);
  const buffer = init.memory.kind === "shared"
    ? init.memory.buffer
    : Deno.UnsafePointerView.getArrayBuffer(
      Deno.UnsafePointer.create(init.memory.address)!,
      init.memory.size,
    );
  const u16 = new Uint16Array(buffer);
  const u32 = new Uint32Array(buffer);
  const drain = new Uint8Array(8);

  let version = -1;
  let offsets: number[] = [];
  let widths: number[] = [];
  let snapshot: number[] = [];
  let fdCount = 0;
  /** Doorbells among the polled descriptors: drained when they fire. */
  let doorbellCount = 0;
  let ioFd = -1;
  let pollFds = new Uint8Array(0);
  let pollView = new DataView(pollFds.buffer);
  // struct timespec { i64 tv_sec; i64 tv_nsec; } for ppoll's timeout.
  const timespec = new BigInt64Array(2);
  const timespecBytes = new Uint8Array(timespec.buffer);

  const read = (i: number) =>
    widths[i] === 2
      ? Atomics.load(u16, offsets[i]! >>> 1)
      : Atomics.load(u32, offsets[i]! >>> 2);

  const loadWatchList = () => {
    version = Atomics.load(ctl, CTL_VERSION);
    const n = Atomics.load(ctl, CTL_WORDS);
    offsets = [];
    widths = [];
    for (let i = 0; i < n; i++) {
      offsets.push(Atomics.load(ctl, CTL_TABLE + 2 * i));
      widths.push(Atomics.load(ctl, CTL_TABLE + 2 * i + 1));
    }
    // Compare with the words as the main thread saw them (at watch(), or
    // at a turn since), not as they are now: what changed since it looked
    // is news even if it changed before we got here.
    snapshot = Atomics.exchange(ctl, CTL_SEEN_SET, 0) === 1
      ? offsets.map((_, i) => Atomics.load(ctl, CTL_SEEN + i) >>> 0)
      : offsets.map((_, i) => read(i));
    const control = Atomics.load(ctl, CTL_CONTROL);
    doorbellCount = Atomics.load(ctl, CTL_FDS);
    ioFd = Atomics.load(ctl, CTL_IO_FD);
    const fds: number[] = [];
    for (let i = 0; i < doorbellCount; i++) {
      fds.push(Atomics.load(ctl, CTL_TABLE + 2 * MAX_WORDS + i));
    }
    if (ioFd >= 0) fds.push(ioFd);
    if (fds.length > 0 && control >= 0) fds.push(control);
    fdCount = fds.length;
    // struct pollfd { int fd; short events; short revents; }: 8 bytes each.
    pollFds = new Uint8Array(8 * fdCount);
    pollView = new DataView(pollFds.buffer);
    fds.forEach((fd, i) => {
      pollView.setInt32(8 * i, fd, true);
      pollView.setInt16(8 * i + 4, 1, /* POLLIN */ true);
    });
    Atomics.store(ctl, CTL_LOADED, version);
  };

  const changed = () => {
    const muted = Atomics.load(ctl, CTL_MUTED);
    let any = false;
    for (let i = 0; i < offsets.length; i++) {
      const v = read(i);
      if (v !== snapshot[i]) {
        snapshot[i] = v;
        if ((muted & (1 << i)) === 0) any = true;
      }
    }
    return any;
  };

  /**
   * Waits up to `ms` (with microsecond resolution) on the descriptors;
   * drains the eventfds that fired and returns true if a doorbell or the
   * main thread's sockets did (the main thread's control eventfd only ends
   * the wait, so that the loop looks at its control words again).
   */
  const pollEventFds = (ms: number) => {
    const ns = Math.max(0, Math.round(ms * 1e6));
    timespec[0] = BigInt(Math.floor(ns / 1e9));
    timespec[1] = BigInt(ns % 1e9);
    const n = libc.symbols.ppoll(pollFds, BigInt(fdCount), timespecBytes, null);
    if (n <= 0) return false;
    const control = Atomics.load(ctl, CTL_CONTROL);
    let news = false;
    for (let i = 0; i < fdCount; i++) {
      if (pollView.getInt16(8 * i + 6, true) !== 0) {
        const fd = pollView.getInt32(8 * i, true);
        pollView.setInt16(8 * i + 6, 0, true);
        // The epoll set stays readable until the main thread dispatches
        // it; reading an eventfd returns and clears its counter.
        if (fd === ioFd) {
          news = true;
          continue;
        }
        libc.symbols.read(fd, drain, 8n);
        if (fd !== control) news = true;
      }
    }
    return news;
  };

  const wakeFd = init.wakeSocket === undefined
    ? -1
    : connectWakeSocket(init.wakeSocket);
  const wakeByte = new Uint8Array(1);
  const signalMain = () => {
    if (Atomics.exchange(ctl, CTL_WAITING, 0) === 1) {
      // A full socket buffer (EAGAIN) means wake-ups are queued already;
      // MSG_NOSIGNAL, so a closed reader is an error, not SIGPIPE.
      if (wakeFd < 0) self.postMessage("wake");
      else libc.symbols.send(wakeFd, wakeByte, 1n, MSG_NOSIGNAL);
    } else Atomics.store(ctl, CTL_PENDING, 1);
  };

  let lastChange = performance.now();
  let lastActivity = Atomics.load(ctl, CTL_ACTIVITY);
  while (Atomics.load(ctl, CTL_STOP) === 0) {
    if (Atomics.load(ctl, CTL_VERSION) !== version) loadWatchList();
    const now = performance.now();
    const activity = Atomics.load(ctl, CTL_ACTIVITY);
    if (activity !== lastActivity) {
      lastActivity = activity;
      lastChange = now;
    }
    if (Atomics.load(ctl, CTL_WAITING) === 0) {
      // The main thread is busy, and each of its turns looks at the rings
      // itself: sleep until it waits. Spinning now would only take CPU from
      // it (during bulk transfer each worker took 20-35% of a core that
      // way). What changes meanwhile is still found: the snapshot is older.
      Atomics.store(ctl, CTL_PARKED, 1);
      if (
        Atomics.load(ctl, CTL_WAITING) === 0 &&
        Atomics.load(ctl, CTL_STOP) === 0
      ) {
        Atomics.wait(ctl, CTL_WAITING, 0, PARKED_MS);
      }
      Atomics.store(ctl, CTL_PARKED, 0);
      // Compare with what the main thread saw when its last turn began,
      // not with our older look: what it has handled is no news.
      if (Atomics.exchange(ctl, CTL_SEEN_SET, 0) === 1) {
        for (let i = 0; i < snapshot.length; i++) {
          snapshot[i] = Atomics.load(ctl, CTL_SEEN + i) >>> 0;
        }
      }
      continue;
    }
    if (changed()) {
      lastChange = now;
      signalMain();
      continue;
    }
    const idle = now - lastChange;
    if (idle < init.options.spinMs) {
      // Right after a change or our own work a reply is likely within
      // microseconds: look again at once, but give the CPU to anything
      // else runnable first. Sleeping instead costs more than the sleep
      // on a virtual machine, where an idle vCPU halts and waking a thread
      // on it takes 30-80 us (docs/performance.md).
      if (fdCount > 0 && pollEventFds(0)) {
        lastChange = performance.now();
        signalMain();
        continue;
      }
      libc.symbols.sched_yield();
      continue;
    }
    // After the spin, with doorbells to block on, the peer's doorbell is
    // the wake-up: block in poll(2) instead of polling every fraction of a
    // millisecond. Those short sleeps cost each worker a third of a core
    // and, on two cores, the main threads their turn.
    const ms = doorbellCount > 0
      ? init.options.idleSleepMs
      : sleepFor(idle, init.options);
    if (ms >= 1) {
      // A long sleep, which activity should cut short: say so first, then
      // look at ACTIVITY once more, so that activity() either sees DEEP and
      // wakes us or we see its count.
      Atomics.store(ctl, CTL_DEEP, 1);
      if (Atomics.load(ctl, CTL_ACTIVITY) !== lastActivity) {
        Atomics.store(ctl, CTL_DEEP, 0);
        continue;
      }
    }
    if (fdCount > 0 && ms > 0) {
      // Block on the descriptors (the control eventfd among them ends the
      // sleep early), looking at the words again after it.
      if (pollEventFds(ms)) {
        lastChange = performance.now();
        signalMain();
      }
    } else if (ms > 0) {
      Atomics.wait(ctl, CTL_SLEEP, 0, ms);
    }
    Atomics.store(ctl, CTL_DEEP, 0);
  }
  if (wakeFd >= 0) sharedLibc().close(wakeFd);
  libc.close();
  self.postMessage("stopped");
}
