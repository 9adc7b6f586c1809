import "../../_support/ffi.ts";
import { assert, assertEquals, assertThrows } from "../../../dev_deps.ts";
import { EventFd } from "../../../device/notify/eventfd.ts";
import { EPOLLIN, IoPoller } from "../../../device/notify/io_poller.ts";
import {
  EFD_CLOEXEC,
  EFD_NONBLOCK,
  libc,
  POLLIN,
  pollOnce,
} from "../../../device/shm/_libc.ts";

/**
 * A poller and eventfds to watch, each counter a descriptor whose readiness
 * a test controls with `signal()`. Everything is closed at the end, the
 * eventfds only after leaving the set, as `remove()` asks.
 */
async function withEventFds(
  count: number,
  fn: (io: IoPoller, efds: EventFd[]) => void | Promise<void>,
): Promise<void> {
  const io = new IoPoller();
  const efds = Array.from({ length: count }, () => EventFd.create());
  try {
    await fn(io, efds);
  } finally {
    for (const e of efds) if (!e.closed) io.remove(e.fd);
    io.close();
    await Promise.all(efds.map((e) => e.close()));
  }
}

/** Whether the poller's descriptor is readable now (poll with no wait). */
async function epollReadable(io: IoPoller): Promise<boolean> {
  const [revents = 0] = await pollOnce([{ fd: io.fd, events: POLLIN }], 0);
  return (revents & POLLIN) !== 0;
}

Deno.test("IoPoller.dispatch() returns 0 and runs nothing when no descriptor is ready", async () => {
  await withEventFds(1, (io, [efd]) => {
    let calls = 0;
    io.add(efd!.fd, EPOLLIN, () => calls++);
    assertEquals(io.size, 1);
    assertEquals(io.dispatch(), 0);
    assertEquals(calls, 0);
  });
});

Deno.test("IoPoller.dispatch() runs a handler once per edge, not again while nothing new happens", async () => {
  await withEventFds(1, (io, [efd]) => {
    const seen: number[] = [];
    io.add(efd!.fd, EPOLLIN, (events) => seen.push(events));
    efd!.signal();
    assertEquals(io.dispatch(), 1);
    assertEquals(seen, [EPOLLIN]);
    // The counter is still non-zero (nobody drained it): a level-triggered
    // set would report it again here.
    assertEquals(io.dispatch(), 0);
    assertEquals(seen.length, 1);
    efd!.signal();
    assertEquals(io.dispatch(), 1);
    assertEquals(seen, [EPOLLIN, EPOLLIN]);
    assertEquals(efd!.drain(), 2n);
  });
});

Deno.test("IoPoller.dispatch() runs the handler of every ready descriptor once", async () => {
  await withEventFds(3, (io, efds) => {
    const calls = new Map<number, number>();
    for (const [i, e] of efds.entries()) {
      io.add(e.fd, EPOLLIN, () => calls.set(i, (calls.get(i) ?? 0) + 1));
    }
    efds[0]!.signal();
    efds[2]!.signal();
    efds[2]!.signal();
    assertEquals(io.dispatch(), 2);
    assertEquals([...calls.entries()].sort(), [[0, 1], [2, 1]]);
  });
});

Deno.test("IoPoller.remove() stops a descriptor's handler, and ignores one not in the set", async () => {
  await withEventFds(1, (io, [efd]) => {
    let calls = 0;
    io.add(efd!.fd, EPOLLIN, () => calls++);
    efd!.signal();
    io.remove(efd!.fd);
    assertEquals(io.size, 0);
    assertEquals(io.dispatch(), 0);
    efd!.signal();
    assertEquals(io.dispatch(), 0);
    assertEquals(calls, 0);
    io.remove(efd!.fd);
    io.remove(12345);
  });
});

Deno.test("IoPoller.closeWatched() closes the descriptor and forgets it: a number reused later runs only its new handler", () => {
  const io = new IoPoller();
  const c = libc();
  const one = new Uint8Array(new BigUint64Array([1n]).buffer);
  const open = new Set<number>();
  const eventfd = () => {
    const fd = c.eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    assert(fd >= 0, "eventfd()");
    open.add(fd);
    return fd;
  };
  try {
    const old = eventfd();
    const ran: string[] = [];
    io.add(old, EPOLLIN, () => ran.push("old"));
    c.write(old, one, 8n); // an event pending
    io.closeWatched(old);
    open.delete(old);
    assertEquals(io.size, 0);
    // Closed: writing to it fails (EBADF) rather than signalling.
    assertEquals(Number(c.write(old, one, 8n)), -1);
    assertEquals(io.dispatch(), 0);
    // The kernel hands out the lowest free number, so the old one comes
    // back (unless another thread of the runtime took it first: a few
    // tries). The kernel dropped the old descriptor from the set, so adding
    // the new one works, and only its handler runs.
    let reused = -1;
    for (let i = 0; i < 8 && reused !== old; i++) reused = eventfd();
    assertEquals(reused, old);
    io.add(reused, EPOLLIN, () => ran.push("new"));
    c.write(reused, one, 8n);
    assertEquals(io.dispatch(), 1);
    assertEquals(ran, ["new"]);
    io.remove(reused);
  } finally {
    io.close();
    for (const fd of open) c.close(fd);
  }
});

Deno.test("IoPoller.dispatch() skips a descriptor that an earlier handler of the same batch removed", async () => {
  await withEventFds(2, (io, [a, b]) => {
    const ran: string[] = [];
    io.add(a!.fd, EPOLLIN, () => {
      ran.push("a");
      io.remove(b!.fd);
    });
    io.add(b!.fd, EPOLLIN, () => {
      ran.push("b");
      io.remove(a!.fd);
    });
    a!.signal();
    b!.signal();
    // Both events come back from one epoll_wait; whichever runs first
    // removes the other, whose event is then stale.
    assertEquals(io.dispatch(), 1);
    assertEquals(ran.length, 1);
    assertEquals(io.size, 1);
  });
});

Deno.test("IoPoller.again() runs the handler with EPOLLIN on the next dispatch, without an edge", async () => {
  await withEventFds(1, (io, [efd]) => {
    const seen: number[] = [];
    io.add(efd!.fd, EPOLLIN, (events) => seen.push(events));
    assert(!io.hasAgain);
    io.again(efd!.fd);
    assert(io.hasAgain);
    assertEquals(io.dispatch(), 1);
    assertEquals(seen, [EPOLLIN]);
    assert(!io.hasAgain);
    assertEquals(io.dispatch(), 0, "again() holds for one dispatch only");
    assertEquals(seen.length, 1);
  });
});

Deno.test("IoPoller.again() ignores a descriptor not in the set, and remove() cancels it", async () => {
  await withEventFds(1, (io, [efd]) => {
    let calls = 0;
    io.again(efd!.fd);
    assert(!io.hasAgain);
    io.add(efd!.fd, EPOLLIN, () => calls++);
    io.again(efd!.fd);
    io.remove(efd!.fd);
    assert(!io.hasAgain);
    assertEquals(io.dispatch(), 0);
    assertEquals(calls, 0);
  });
});

Deno.test("IoPoller.add() throws with the errno for a bad descriptor and for one already in the set", async () => {
  await withEventFds(1, (io, [efd]) => {
    assertThrows(
      () => io.add(-1, EPOLLIN, () => {}),
      Error,
      "Cannot watch descriptor -1: EBADF",
    );
    io.add(efd!.fd, EPOLLIN, () => {});
    assertThrows(
      () => io.add(efd!.fd, EPOLLIN, () => {}),
      Error,
      `Cannot watch descriptor ${efd!.fd}: EEXIST`,
    );
    assertEquals(io.size, 1);
  });
});

Deno.test("IoPoller.fd is readable while events are pending, and not once dispatch() took them", async () => {
  await withEventFds(1, async (io, [efd]) => {
    io.add(efd!.fd, EPOLLIN, () => {});
    assert(!await epollReadable(io));
    efd!.signal();
    assert(await epollReadable(io));
    assert(await epollReadable(io), "polling does not consume the event");
    assertEquals(io.dispatch(), 1);
    assert(!await epollReadable(io));
    // again() is invisible to the kernel: a sleeper checks hasAgain first.
    io.again(efd!.fd);
    assert(!await epollReadable(io));
    assert(io.hasAgain);
  });
});

Deno.test("IoPoller.close() calls onClose of the descriptors still in the set, once", async () => {
  await withEventFds(3, async (io, [kept, removed, quiet]) => {
    const closed: string[] = [];
    const handled: string[] = [];
    io.add(kept!.fd, EPOLLIN, () => handled.push("kept"), () => {
      closed.push("kept");
    });
    io.add(removed!.fd, EPOLLIN, () => handled.push("removed"), () => {
      closed.push("removed");
    });
    io.add(quiet!.fd, EPOLLIN, () => handled.push("quiet"));
    io.remove(removed!.fd);
    for (const e of [kept!, removed!, quiet!]) e.signal();
    io.again(kept!.fd);
    const epfd = io.fd;
    io.close();
    assertEquals(closed, ["kept"]);
    assertEquals(io.size, 0);
    assert(!io.hasAgain);
    assertEquals(io.dispatch(), 0);
    assertEquals(handled, [], "no handler runs after close()");
    io.close();
    assertEquals(closed, ["kept"], "a second close() tells nobody again");
    assert(!await isEpoll(epfd), "the epoll descriptor is closed");
  });
});

Deno.test("IoPoller.close() does not tell a descriptor that an earlier onClose removed", async () => {
  await withEventFds(2, (io, [a, b]) => {
    const closed: string[] = [];
    // One owner with two descriptors: closing for the first drops both.
    io.add(a!.fd, EPOLLIN, () => {}, () => {
      closed.push("a");
      io.remove(b!.fd);
    });
    io.add(b!.fd, EPOLLIN, () => {}, () => closed.push("b"));
    io.close();
    assertEquals(closed, ["a"]);
  });
});

/** Whether `fd` is open on an epoll instance. */
async function isEpoll(fd: number): Promise<boolean> {
  try {
    return await Deno.readLink(`/proc/self/fd/${fd}`) ===
      "anon_inode:[eventpoll]";
  } catch {
    return false;
  }
}
