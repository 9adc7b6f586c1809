/**
 * Four of the path scenarios again with light endpoints: the client, the
 * echo server and the sink as blocking system calls through FFI, one
 * connection at a time, instead of Deno's sockets and event loop. The
 * issue's targets stay on the scenarios in `path_scenarios.ts`, where they
 * were set; these show how much of each figure, and of its baseline, is
 * the endpoints' own cost on two vCPUs (docs/performance.md, "The
 * endpoints' own cost").
 *
 * @module
 */

import type { Scenario } from "./_harness.ts";
import { quantile } from "./_clients.ts";
import {
  blockingBulk,
  blockingConnectRate,
  blockingPingPong,
} from "./_blocking_clients.ts";
import { freePort, GuestServer, Servers, Stack } from "./_stack.ts";
import { bulkPath } from "./path_scenarios.ts";

const BULK_MIB = 256;
const SUFFIX = "blocking FFI client and server";

/** Bulk both ways, connections one at a time, round trip p50 (polling). */
export function blockingEndpointScenarios(): Scenario[] {
  return [
    bulkScenario("host to guest"),
    bulkScenario("guest to host"),
    roundTripScenario(),
    connectionScenario(),
  ];
}

function bulkScenario(direction: "host to guest" | "guest to host"): Scenario {
  const up = direction === "guest to host";
  let sink: Servers;
  let stack: Stack;
  let entry = 0;
  return {
    name:
      `bulk ${direction}, mergeable 64 KiB rx buffers, 64 KiB writes, ${SUFFIX}`,
    unit: "MiB/s",
    rounds: 3,
    async setup() {
      sink = await Servers.start(["sink"], true);
      const routePort = freePort();
      stack = await Stack.start({
        ...bulkPath(up, "tcp", sink.ports.sink!, routePort),
        mergeable: true,
        rxBufferSize: 64 * 1024,
      });
      entry = up ? stack.forwardPorts[0]! : routePort;
    },
    async teardown() {
      await stack?.stop();
      await sink?.stop();
    },
    subject: () => blockingBulk(entry, BULK_MIB),
    baselines: [{
      name: "direct TCP loopback",
      run: () => blockingBulk(sink.ports.sink!, BULK_MIB),
    }],
  };
}

function roundTripScenario(): Scenario {
  let rig: GuestServer;
  return {
    name: `64-byte round trip p50, host to guest echo, polling mode, ${SUFFIX}`,
    unit: "us",
    rounds: 3,
    async setup() {
      rig = await GuestServer.start("echo", 7, { blocking: true });
    },
    teardown: () => rig?.stop(),
    subject: () => quantile(blockingPingPong(rig.port, 2000), 0.5),
    baselines: [{
      name: "direct TCP loopback round trip",
      run: () => quantile(blockingPingPong(rig.direct, 2000), 0.5),
    }],
  };
}

function connectionScenario(): Scenario {
  let rig: GuestServer;
  return {
    name:
      `connection setup host to guest (connect, 1-byte echo, close), 1 at a time, ${SUFFIX}`,
    unit: "conn/s",
    rounds: 3,
    async setup() {
      rig = await GuestServer.start("echo", 7, { blocking: true });
    },
    teardown: () => rig?.stop(),
    subject: () => blockingConnectRate(rig.port, 2000),
    baselines: [{
      name: "direct TCP loopback",
      run: () => blockingConnectRate(rig.direct, 2000),
    }],
  };
}
