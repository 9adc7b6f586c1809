/**
 * `GET /v1/events` as Server-Sent Events over a real admin listener: one TCP
 * connection through a route shows up as a `connect` then a `close` event.
 */
import "../_support/ffi.ts";
import { assert, assertEquals, assertMatch } from "../../dev_deps.ts";
import { startAdminServer } from "../../admin/server.ts";
import {
  echoPair,
  echoRoute,
  open,
  pattern,
  portOf,
  roundTrip,
  within,
} from "./_helpers.ts";

/** One SSE message: its fields, or a comment. */
interface Frame {
  comment: string[];
  event?: string;
  id?: string;
  data?: string;
}

/**
 * Splits an SSE byte stream into messages, strictly: every line is a
 * comment (`:`) or `field: value` for a field we expect; a blank line ends
 * a message.
 */
class SseReader {
  #reader: ReadableStreamDefaultReader<Uint8Array>;
  #decoder = new TextDecoder();
  #buffer = "";

  constructor(body: ReadableStream<Uint8Array>) {
    this.#reader = body.getReader();
  }

  /** The next message, or throws after `ms`. */
  next(ms = 5000): Promise<Frame> {
    return within(this.#next(), ms, "the next SSE message");
  }

  async #next(): Promise<Frame> {
    for (;;) {
      const end = this.#buffer.indexOf("\n\n");
      if (end >= 0) {
        const block = this.#buffer.slice(0, end);
        this.#buffer = this.#buffer.slice(end + 2);
        return parseFrame(block);
      }
      const r = await this.#reader.read();
      if (r.done) throw new Error("the event stream ended");
      this.#buffer += this.#decoder.decode(r.value, { stream: true });
    }
  }

  cancel(): Promise<void> {
    return this.#reader.cancel();
  }
}

function parseFrame(block: string): Frame {
  const frame: Frame = { comment: [] };
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) {
      frame.comment.push(line.slice(1).trim());
      continue;
    }
    const m = /^(event|id|data|retry): ?(.*)$/.exec(line);
    assert(m !== null, `not an SSE line: ${JSON.stringify(line)}`);
    const [, field, value] = m;
    if (field === "data") {
      frame.data = frame.data === undefined
        ? value!
        : `${frame.data}\n${value}`;
    } else if (field === "event" || field === "id") {
      assertEquals(frame[field], undefined, `${field} appears once`);
      frame[field] = value!;
    }
  }
  return frame;
}

Deno.test("GET /v1/events streams a connect then a close event for a TCP connection through a route", async () => {
  const e = await echoPair([echoRoute("web")]);
  const server = await startAdminServer(
    e.pair.sidecar,
    { host: "127.0.0.1", port: 0 },
    () => {},
  );
  let sse: SseReader | null = null;
  try {
    const res = await fetch(`${server.url}/v1/events`);
    assertEquals(res.status, 200);
    assertMatch(res.headers.get("content-type")!, /^text\/event-stream/);
    sse = new SseReader(res.body!);
    const hello = await sse.next();
    assertEquals(hello.comment, ["ivsock events"]);
    assertEquals(hello.event, undefined);

    const client = await open(
      portOf(e.pair.sidecar.routes.get("web")!.listening),
    );
    try {
      await roundTrip(client, pattern(300));
    } finally {
      client.close();
    }

    const events: Array<
      { id: number; type: string; data: Record<string, unknown> }
    > = [];
    while (!events.some((x) => x.type === "close")) {
      const f = await sse.next();
      if (f.event === undefined) continue; // a keep-alive comment
      assert(f.id !== undefined && /^\d+$/.test(f.id), `id ${f.id}`);
      assert(f.data !== undefined, "every event has data");
      const data = JSON.parse(f.data);
      assertEquals(data.type, f.event, "the event name is the data's type");
      events.push({ id: Number(f.id), type: f.event, data });
    }
    assertEquals(events.map((x) => x.type), ["connect", "close"]);
    assertEquals(events.map((x) => x.id), [1, 2], "ids count from 1");
    const [connect, close] = events as [typeof events[0], typeof events[0]];
    assertEquals(connect.data.route, "web");
    assertMatch(String(connect.data.connection), /^c\d+$/);
    assertMatch(String(connect.data.remote), /^127\.0\.0\.1:\d+$/);
    assert(typeof connect.data.time === "number");
    assertEquals(close.data.connection, connect.data.connection);
    assertEquals(close.data.route, "web");
    assertEquals(close.data.outcome, "closed");
    assertEquals(close.data.bytesToGuest, 300);
    assertEquals(close.data.bytesFromGuest, 300);
  } finally {
    await sse?.cancel();
    await within(server.stop(), 5000, "the admin server to stop");
    await e.stop();
  }
});
