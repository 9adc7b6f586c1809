/**
 * The runners mute the waker's words of queues they need no news of (the
 * device's rx queue while nothing waits for buffers, the driver's tx queue
 * while nothing waits for room), and unmute them when output waits. These
 * tests make that wait the only way forward: one write (so the application
 * does not poke the loop again), a credit window far larger than the ring
 * (so no credit update comes to wake the sender), and a heartbeat of 30 s,
 * the loops' only other wake-up. A sender left muted would then move one
 * ring's worth per heartbeat and miss the tests' 20 s timeout; unmuted, the
 * transfer takes well under a second.
 */
import { assertEquals } from "../../../dev_deps.ts";
import { enginePair, readAll } from "../../_support/engine_pair.ts";
import { Prng } from "../../_support/prng.ts";

const BEAT = { heartbeatMs: 30_000 };
/** 1 MiB through a ring of 8 x 4 KiB: about 32 waits for the other side. */
const BYTES = 1 << 20;

/**
 * Sends BYTES in one write from `from` to a listener of `to` over an engine
 * pair whose receiver has a credit window far larger than the ring.
 */
async function oneWrite(
  from: "host" | "guest",
  port: number,
  seed: number,
): Promise<void> {
  const to = from === "host" ? "guest" : "host";
  const p = await enginePair({
    [to]: { bufAlloc: 64 << 20 },
    driver: { queueSize: 8, rxBufferSize: 4096, mergeable: true },
    deviceRunner: BEAT,
    driverRunner: BEAT,
    timeoutMs: 120_000,
  });
  try {
    const listener = p[to].listen(port);
    const data = new Prng(seed).bytes(BYTES);
    const received = listener.accept().then((c) => readAll(c.readable));
    // If sending fails, stop() below ends the reader too: let the sending
    // error be the one reported, not this one's.
    received.catch(() => {});
    const c = await p[from].connect(port);
    await c.write(data);
    c.closeWrite();
    assertEquals((await received).length, BYTES);
    listener.close();
  } finally {
    await p.stop();
  }
}

Deno.test({
  name:
    "the device sends into rx buffers the driver posts while output waits for them",
  timeout: 20_000,
  fn: () => oneWrite("host", 80, 7),
});

Deno.test({
  name:
    "the driver sends into tx space the device frees while output waits for it",
  timeout: 20_000,
  fn: () => oneWrite("guest", 9000, 8),
});
