/**
 * The stack most fault tests run: `serve` and `guest` as child processes
 * with routes both ways (host TCP -> guest vsock 5000 -> a checked service
 * in the guest; guest vsock 6000 -> a checked service on the host), and the
 * ports their clients connect to.
 *
 * @module
 */

import { freePort, Stack, waitUntil } from "../_support/process_stack.ts";
import { checkedService } from "./_traffic.ts";

/** Builds the stack (the processes are started by the test). */
export async function twoWayStack(options: { driverTimeoutMs?: number } = {}) {
  const guestService = await checkedService();
  const hostTarget = await checkedService();
  const h2gPort = freePort();
  const fwdPort = freePort();
  const stack = await Stack.create({
    routes: [
      {
        name: "h2g",
        from: { type: "tcp", host: "127.0.0.1", port: h2gPort },
        to: { type: "vsock", port: 5000 },
      },
      {
        name: "g2h",
        from: { type: "vsock", port: 6000 },
        to: { type: "tcp", host: "127.0.0.1", port: hostTarget.port },
      },
    ],
    exposes: [`5000=127.0.0.1:${guestService.port}`],
    forwards: [`127.0.0.1:${fwdPort}=6000`],
    ...options,
  });
  return {
    stack,
    guestService,
    hostTarget,
    /** The host-to-guest route's listener. */
    h2gPort,
    /** The guest agent's forward listener. */
    fwdPort,
    /** Waits until no service session is open on either side. */
    allSessionsEnded: () =>
      waitUntil(
        () => guestService.open === 0 && hostTarget.open === 0,
        10_000,
        () =>
          `service sessions to end (guest ${guestService.open}, host ${hostTarget.open})`,
      ),
    async close() {
      await stack.close();
      await guestService.close();
      await hostTarget.close();
    },
  };
}

/** What {@linkcode twoWayStack} returns. */
export type TwoWayStack = Awaited<ReturnType<typeof twoWayStack>>;
