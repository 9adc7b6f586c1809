/**
 * The benchmarks' own machinery, small, so that `deno task bench` does not
 * rot between runs: the harness's medians, ratios, targets and failure
 * reporting, and every client and server kind through a real sidecar and
 * agent and directly. No figure is judged here (speed is measured by the
 * bench, never asserted in tests); that each path answers, and answers
 * right, is.
 */
import "../_support/ffi.ts";
import { assert, assertEquals } from "../../dev_deps.ts";
import { failures, report, runScenarios } from "../../bench/_harness.ts";
import { bulk, connectRate, pingPong } from "../../bench/_clients.ts";
import {
  blockingBulk,
  blockingConnectRate,
  blockingPingPong,
} from "../../bench/_blocking_clients.ts";
import { freePort, GuestServer, Servers, Stack } from "../../bench/_stack.ts";

Deno.test("the bench harness reports medians, ratios and targets, and a failing scenario without losing the others", async () => {
  const rounds = [5, 1, 3];
  let round = 0;
  // What the harness prints is checked, not shown: a "FAILED" line in the
  // suite's output would read as a failing test.
  const printed: string[] = [];
  const { log, error } = console;
  console.log = console.error = (...args: unknown[]) => {
    printed.push(args.join(" "));
  };
  const path = await Deno.makeTempFile({ suffix: ".json" });
  try {
    await checkHarness(path, () => rounds[round++]!, printed);
  } finally {
    console.log = log;
    console.error = error;
    failures.length = 0;
    await Deno.remove(path);
  }
});

async function checkHarness(
  path: string,
  subject: () => number,
  printed: string[],
): Promise<void> {
  const results = await runScenarios([
    {
      name: "works",
      unit: "u",
      rounds: 3,
      warmUp: false,
      subject,
      baselines: [{
        name: "base",
        run: () => 2,
        target: { text: ">= 1x base", met: (x, b) => x >= b },
      }],
    },
    {
      name: "breaks",
      unit: "u",
      rounds: 1,
      warmUp: false,
      subject: () => {
        throw new Error("no such path");
      },
      baselines: [{ name: "base", run: () => 1 }],
    },
  ]);
  assertEquals(results, [{
    name: "works",
    unit: "u",
    value: 3,
    baseline: { name: "base", value: 2 },
    ratio: 1.5,
    target: { text: ">= 1x base", met: true },
  }]);
  assertEquals(failures, [{ name: "breaks", error: "no such path" }]);
  await report(results, path);
  const written = JSON.parse(await Deno.readTextFile(path));
  assertEquals(written.scenarios, results);
  assertEquals(written.failures, failures);
  assert(written.machine.cpus > 0, "the machine is described");
  const row = printed.find((l) => l.startsWith("works"));
  assert(row?.includes("1.5x") && row.includes("met: >= 1x base"), row);
  assert(printed.includes("FAILED: breaks: no such path"), "failure printed");
}

Deno.test("the bench's Deno and blocking clients get their echoes through ivsock and directly", async () => {
  for (const blocking of [false, true]) {
    const rig = await GuestServer.start("echo", 7, { blocking });
    try {
      for (const port of [rig.port, rig.direct]) {
        const sorted = (xs: number[]) =>
          xs.length === 20 && xs.every((x, i) => i === 0 || x >= xs[i - 1]!);
        if (blocking) {
          assert(blockingConnectRate(port, 20) > 0);
          assert(sorted(blockingPingPong(port, 20)), "20 round trips, sorted");
        } else {
          assert((await connectRate(port, 20, 1)) > 0);
          assert((await connectRate(port, 20, 4)) > 0);
          assert(sorted(await pingPong(port, 20)), "20 round trips, sorted");
        }
      }
    } finally {
      await rig.stop();
    }
  }
});

Deno.test("the bench's sinks count every byte of a bulk transfer both ways, from the Deno and the blocking client", async () => {
  const blockingSink = await Servers.start(["sink"], true);
  const denoSink = await Servers.start(["sink"]);
  const down = freePort();
  const downDeno = freePort();
  let stack: Stack | undefined;
  try {
    stack = await Stack.start({
      routes: [
        {
          name: "down",
          from: { type: "tcp", port: down },
          to: { type: "vsock", port: 9 },
        },
        {
          name: "down-deno",
          from: { type: "tcp", port: downDeno },
          to: { type: "vsock", port: 10 },
        },
        {
          name: "up",
          from: { type: "vsock", port: 6000 },
          to: {
            type: "tcp",
            host: "127.0.0.1",
            port: blockingSink.ports.sink!,
          },
        },
      ],
      exposes: [
        { port: 9, tcpPort: blockingSink.ports.sink! },
        { port: 10, tcpPort: denoSink.ports.sink! },
      ],
      forwards: [{ port: 6000 }],
    });
    // Each throws unless its sink counted exactly the bytes sent.
    assert(blockingBulk(down, 4) > 0, "host to guest, blocking client");
    assert(blockingBulk(stack.forwardPorts[0]!, 4) > 0, "guest to host");
    assert(blockingBulk(blockingSink.ports.sink!, 4) > 0, "direct");
    assert((await bulk(downDeno, 4)) > 0, "host to guest, Deno client");
  } finally {
    await stack?.stop();
    await denoSink.stop();
    await blockingSink.stop();
  }
});
