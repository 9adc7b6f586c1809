/**
 * Runs inside the e2e guest (shipped in the initramfs by `build_guest.sh`),
 * beside the guest agent: checks the guest-initiated path and keeps the
 * guest up until the host test says it is done.
 *
 *     deno run --allow-all tests/e2e/guest_forward_poll.ts HOST:PORT TIMEOUT_S
 *
 * HOST:PORT is the agent's `--forward` listener, which carries each
 * connection over vsock to a guest-initiated host route and on to the host
 * test's TCP service. Every {@linkcode POLL_INTERVAL_MS} this program
 * connects, sends `poll <n>\n`, half-closes, and reads the answer (one line)
 * to the end. It prints `guest_forward: answer <line>` whenever the answer
 * changes, so the host can check what its service said, and exits 0 once
 * the answer ends in {@linkcode STOP}. Until the agent and its transport are
 * up, a connection is refused or closed without an answer; that is retried.
 * It exits 1 when TIMEOUT_S seconds pass without a stop.
 *
 * It imports nothing: the agent already costs the guest a long start-up.
 *
 * @module
 */

/** The host service's last word: the guest may power off. */
export const STOP = "stop";
/** The host service's answer while its checks are still running. */
export const WAIT = "wait";
/** Prefix of every line this program prints. */
export const PREFIX = "guest_forward:";

/** Between polls: often enough to stop promptly, rare enough to stay cheap
 * under TCG (each poll is a vsock connection through the agent). */
const POLL_INTERVAL_MS = 500;
/** One poll's budget, connect to the end of the answer. */
const POLL_TIMEOUT_MS = 10_000;
/** An answer is one short line; anything longer is an error. */
const MAX_ANSWER_BYTES = 256;

async function poll(
  hostname: string,
  port: number,
  n: number,
): Promise<string | null> {
  let conn: Deno.TcpConn;
  try {
    conn = await Deno.connect({ hostname, port });
  } catch {
    return null; // The agent is not listening yet.
  }
  const timer = setTimeout(() => conn.close(), POLL_TIMEOUT_MS);
  try {
    await conn.write(new TextEncoder().encode(`poll ${n}\n`));
    await conn.closeWrite();
    const answer = new Uint8Array(MAX_ANSWER_BYTES);
    let length = 0;
    while (length < answer.length) {
      const got = await conn.read(answer.subarray(length));
      if (got === null) break;
      length += got;
    }
    const text = new TextDecoder().decode(answer.subarray(0, length)).trim();
    return text === "" ? null : text;
  } catch {
    return null; // Reset: the transport is not up yet, or timed out.
  } finally {
    clearTimeout(timer);
    try {
      conn.close();
    } catch {
      // Closed by the timer.
    }
  }
}

async function main(args: string[]): Promise<number> {
  const m = /^(.+):(\d+)$/.exec(args[0] ?? "");
  const timeoutS = Number(args[1]);
  if (m === null || !(timeoutS > 0)) {
    console.log(
      `${PREFIX} usage: guest_forward_poll.ts HOST:PORT TIMEOUT_S, received ${
        JSON.stringify(args)
      }`,
    );
    return 2;
  }
  const hostname = m[1]!;
  const port = Number(m[2]);
  const deadline = Date.now() + timeoutS * 1000;
  let last: string | null = null;
  for (let n = 0; Date.now() < deadline; n++) {
    const answer = await poll(hostname, port, n);
    if (answer !== null && answer !== last) {
      console.log(`${PREFIX} answer ${answer}`);
      last = answer;
    }
    if (answer?.endsWith(` ${STOP}`)) return 0;
    await new Promise((r) => setTimeout(r, POLL_INTERVAL_MS));
  }
  console.log(
    `${PREFIX} no "${STOP}" within ${timeoutS} s (last answer: ${last})`,
  );
  return 1;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
