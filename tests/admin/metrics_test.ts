/**
 * `GET /metrics` parsed with a small strict reader of the Prometheus text
 * exposition format 0.0.4, after known traffic through a route.
 */
import "../_support/ffi.ts";
import { assert, assertEquals, assertThrows } from "../../dev_deps.ts";
import { escapeLabel } from "../../admin/metrics.ts";
import { tcpServer } from "../_support/tcp_servers.ts";
import {
  call,
  echoPair,
  echoRoute,
  open,
  pattern,
  portOf,
  waitFor,
  within,
} from "./_helpers.ts";

interface Sample {
  labels: Record<string, string>;
  value: number;
}

interface Family {
  help: string;
  type: "counter" | "gauge";
  samples: Sample[];
}

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*/;
const NUMBER =
  /^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$|^[+-]?Inf$|^NaN$/;

/**
 * Parses exposition text strictly: only HELP, TYPE and sample lines; HELP
 * and TYPE once per metric and before its samples; a metric's samples in
 * one group; label values with only `\\`, `\"` and `\n` escapes; numeric
 * values; no duplicate series; a final newline.
 */
function parseExposition(text: string): Map<string, Family> {
  const families = new Map<string, Family>();
  const help = new Map<string, string>();
  const closed = new Set<string>(); // metrics whose group has ended
  const series = new Set<string>();
  let current: string | null = null;
  assert(text.endsWith("\n"), "the text ends with a newline");
  const lines = text.slice(0, -1).split("\n");
  lines.forEach((line, i) => {
    const where = `line ${i + 1}: ${JSON.stringify(line)}`;
    let m: RegExpExecArray | null;
    if ((m = /^# HELP (\S+) (.*)$/.exec(line)) !== null) {
      const [, name, text] = m as unknown as [string, string, string];
      assert(METRIC_NAME.test(name), `bad metric name, ${where}`);
      assert(!help.has(name), `HELP declared twice, ${where}`);
      assert(!/\\(?![\\n])/.test(text), `bad escape in HELP, ${where}`);
      help.set(name, text);
      if (current !== null) closed.add(current);
      current = name;
    } else if ((m = /^# TYPE (\S+) (counter|gauge)$/.exec(line)) !== null) {
      const [, name, type] = m as unknown as [string, string, Family["type"]];
      assert(help.has(name) && current === name, `TYPE before HELP, ${where}`);
      assert(!families.has(name), `TYPE declared twice, ${where}`);
      families.set(name, { help: help.get(name)!, type, samples: [] });
    } else {
      assert(!line.startsWith("#"), `unexpected comment, ${where}`);
      const { name, labels, value } = parseSample(line, where);
      const family = families.get(name);
      assert(family !== undefined, `sample without HELP and TYPE, ${where}`);
      assert(
        current === name && !closed.has(name),
        `sample out of its group, ${where}`,
      );
      const key = `${name}${JSON.stringify(Object.entries(labels).sort())}`;
      assert(!series.has(key), `duplicate series, ${where}`);
      series.add(key);
      family.samples.push({ labels, value });
    }
  });
  for (const name of help.keys()) {
    assert(families.has(name), `${name} has HELP but no TYPE`);
  }
  return families;
}

function parseSample(
  line: string,
  where: string,
): { name: string; labels: Record<string, string>; value: number } {
  const nameMatch = /^[a-zA-Z_:][a-zA-Z0-9_:]*/.exec(line);
  assert(nameMatch !== null, `no metric name, ${where}`);
  const name = nameMatch[0];
  let at = name.length;
  const labels: Record<string, string> = {};
  if (line[at] === "{") {
    at++;
    while (line[at] !== "}") {
      const ln = LABEL_NAME.exec(line.slice(at));
      assert(ln !== null, `bad label name at ${at}, ${where}`);
      const label = ln[0];
      assert(!(label in labels), `label ${label} twice, ${where}`);
      at += label.length;
      assert(line.slice(at, at + 2) === '="', `expected =" at ${at}, ${where}`);
      at += 2;
      let value = "";
      for (;;) {
        const c = line[at];
        assert(c !== undefined, `unterminated label value, ${where}`);
        if (c === '"') break;
        if (c === "\\") {
          const next = line[at + 1];
          assert(
            next === "\\" || next === '"' || next === "n",
            `bad escape \\${next} in a label value, ${where}`,
          );
          value += next === "n" ? "\n" : next;
          at += 2;
        } else {
          value += c;
          at++;
        }
      }
      at++; // the closing quote
      labels[label] = value;
      if (line[at] === ",") {
        at++;
        assert(line[at] !== "}", `trailing comma, ${where}`);
      } else {
        assert(line[at] === "}", `expected , or } at ${at}, ${where}`);
      }
    }
    at++;
  }
  assert(line[at] === " ", `expected one space before the value, ${where}`);
  const raw = line.slice(at + 1);
  assert(NUMBER.test(raw), `the value is not a number, ${where}`);
  return { name, labels, value: Number(raw) };
}

/** The value of the one sample of `name` whose labels include `labels`. */
function value(
  families: Map<string, Family>,
  name: string,
  labels: Record<string, string> = {},
): number {
  const f = families.get(name);
  assert(f !== undefined, `${name} is exported`);
  const hits = f.samples.filter((s) =>
    Object.entries(labels).every(([k, v]) => s.labels[k] === v)
  );
  assertEquals(
    hits.length,
    1,
    `one ${name} sample for ${JSON.stringify(labels)}`,
  );
  return hits[0]!.value;
}

Deno.test("the strict exposition parser accepts valid text and refuses what 0.0.4 does not allow", () => {
  const ok = parseExposition(
    '# HELP a_b A help.\n# TYPE a_b counter\na_b{x="q\\"\\\\\\n",y="2"} 3\na_b 1e3\n',
  );
  assertEquals(ok.get("a_b")!.samples, [
    { labels: { x: 'q"\\\n', y: "2" }, value: 3 },
    { labels: {}, value: 1000 },
  ]);
  const bad = [
    "a 1\n", // no HELP or TYPE
    "# HELP a x\n# TYPE a counter\na 1", // no final newline
    '# HELP a x\n# TYPE a counter\na{x="\\t"} 1\n', // bad escape
    '# HELP a x\n# TYPE a counter\na{x="1",} 1\n', // trailing comma
    "# HELP a x\n# TYPE a counter\na one\n", // not a number
    "# HELP a x\n# TYPE a histogram\n", // not counter or gauge
    "# HELP a x\n# TYPE a gauge\n# HELP a y\n", // declared twice
    "# HELP a x\n# TYPE a gauge\na 1\n# HELP b x\n# TYPE b gauge\na 2\n", // out of group
    "# HELP 1a x\n# TYPE 1a gauge\n", // bad name
    "# comment\n", // free comment
  ];
  for (const text of bad) {
    assertThrows(() => parseExposition(text), Error, undefined, text);
  }
});

Deno.test("GET /metrics is valid Prometheus text whose route bytes, connections, packets and device state match the traffic", async () => {
  // The guest service answers each request with twice as many bytes, so
  // the two directions differ.
  const service = tcpServer(async (conn) => {
    let n = 0;
    const buf = new Uint8Array(65536);
    for (;;) {
      const r = await conn.read(buf);
      if (r === null) break;
      n += r;
    }
    const reply = pattern(2 * n, 7);
    let at = 0;
    while (at < reply.length) at += await conn.write(reply.subarray(at));
    await conn.closeWrite();
  });
  const e = await echoPair([echoRoute("web"), echoRoute("idle")], { service });
  try {
    const port = portOf(e.pair.sidecar.routes.get("web")!.listening);
    const sizes = [1234, 40_000];
    for (const size of sizes) {
      const conn = await open(port);
      try {
        await within(
          (async () => {
            const data = pattern(size);
            let at = 0;
            while (at < size) at += await conn.write(data.subarray(at));
            await conn.closeWrite();
            let got = 0;
            const buf = new Uint8Array(65536);
            for (;;) {
              const n = await conn.read(buf);
              if (n === null) break;
              got += n;
            }
            assertEquals(got, 2 * size, "the reply is twice the request");
          })(),
          5000,
          `a request of ${size} bytes`,
        );
      } finally {
        conn.close();
      }
    }
    await waitFor(
      () => e.pair.events.filter((x) => x.type === "close").length === 2,
      "both connections to close",
    );
    const sent = sizes.reduce((a, b) => a + b, 0);

    const r = await call(e.app, "GET", "/metrics");
    assertEquals(r.status, 200);
    assertEquals(
      r.headers.get("content-type"),
      "text/plain; version=0.0.4; charset=utf-8",
    );
    const m = parseExposition(r.body);
    for (const name of m.keys()) {
      assert(name.startsWith("ivsock_"), `${name} has the ivsock_ prefix`);
    }
    const bytes = (route: string, direction: string) =>
      value(m, "ivsock_route_bytes_total", { route, direction });
    assertEquals(bytes("web", "to_guest"), sent);
    assertEquals(bytes("web", "from_guest"), 2 * sent);
    assertEquals(bytes("idle", "to_guest"), 0);
    assertEquals(bytes("idle", "from_guest"), 0);
    assertEquals(m.get("ivsock_route_bytes_total")!.type, "counter");
    assertEquals(
      value(m, "ivsock_route_connections_total", { route: "web" }),
      2,
    );
    assertEquals(
      value(m, "ivsock_route_connections_total", { route: "idle" }),
      0,
    );
    assertEquals(value(m, "ivsock_route_connections", { route: "web" }), 0);
    assertEquals(
      value(m, "ivsock_route_closed_total", {
        route: "web",
        outcome: "closed",
      }),
      2,
    );
    const rwIn = value(m, "ivsock_packets_total", {
      direction: "from_guest",
      op: "RW",
    });
    const rwOut = value(m, "ivsock_packets_total", {
      direction: "to_guest",
      op: "RW",
    });
    assert(rwIn > 0 && rwOut > 0, `RW both ways: in ${rwIn}, out ${rwOut}`);
    assertEquals(
      value(m, "ivsock_packets_total", {
        direction: "to_guest",
        op: "REQUEST",
      }),
      2,
      "one REQUEST per connection",
    );
    assertEquals(value(m, "ivsock_device_up"), 1);
    assertEquals(m.get("ivsock_device_up")!.type, "gauge");
    assertEquals(value(m, "ivsock_device_status"), 15);
    assertEquals(
      m.get("ivsock_queue_used_total")!.samples.map((s) => s.labels.queue),
      ["rx", "tx", "event"],
    );
    for (const f of m.values()) {
      for (const s of f.samples) {
        assert(Number.isFinite(s.value) && s.value >= 0, JSON.stringify(s));
      }
    }
  } finally {
    await e.stop();
  }
});

Deno.test("GET /metrics shows the device down when no guest runs", async () => {
  const e = await echoPair([], { driverTimeoutMs: 300 });
  try {
    await e.pair.guest.stop(0);
    await waitFor(() => !e.pair.sidecar.engine.active, "the guest to be gone");
    const m = parseExposition((await call(e.app, "GET", "/metrics")).body);
    assertEquals(value(m, "ivsock_device_up"), 0);
    assertEquals(m.get("ivsock_queue_pending")!.samples, [], "no queues");
  } finally {
    await e.stop();
  }
});

Deno.test("escapeLabel escapes backslash, double quote and newline, and nothing else", () => {
  assertEquals(escapeLabel("plain-name.1"), "plain-name.1");
  assertEquals(escapeLabel("a\\b"), "a\\\\b");
  assertEquals(escapeLabel('say "hi"'), 'say \\"hi\\"');
  assertEquals(escapeLabel("two\nlines"), "two\\nlines");
  assertEquals(escapeLabel('\\"\n'), '\\\\\\"\\n');
  assertEquals(escapeLabel("tab\there"), "tab\there");
  // What it escapes, a strict reader reads back unchanged.
  const tricky = 'x\\"y\n\\n"';
  const back = parseExposition(
    `# HELP t x\n# TYPE t gauge\nt{v="${escapeLabel(tricky)}"} 1\n`,
  );
  assertEquals(back.get("t")!.samples[0]!.labels.v, tricky);
});
