/**
 * The `ivsock` command line, black-box: each test runs `mod.ts` as a child
 * process and checks the exit code, what it printed, and what it left in
 * /dev/shm. Exit codes: 0 done, 1 start-up failed, 2 bad command line or
 * config.
 */
import { assert, assertEquals, assertMatch } from "../../dev_deps.ts";
import { Cli, runCli } from "./_run.ts";

/** How long a sidecar with no guest may take to say it is ready. */
const READY_MS = 15_000;
/** How long SIGTERM or SIGINT may take to stop an idle sidecar. */
const STOP_MS = 5_000;
const READY = /device ready on /;

let serial = 0;

/** A unique /dev/shm path for this test process. */
function shmPath(tag: string): string {
  return `/dev/shm/ivsock-cli-test-${tag}-${Deno.pid}-${++serial}`;
}

function exists(path: string): boolean {
  try {
    Deno.lstatSync(path);
    return true;
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return false;
    throw err;
  }
}

async function removeIfThere(path: string): Promise<void> {
  await Deno.remove(path, { recursive: true }).catch((err) => {
    if (!(err instanceof Deno.errors.NotFound)) throw err;
  });
}

async function sha256(path: string): Promise<string> {
  const digest = await crypto.subtle.digest(
    "SHA-256",
    await Deno.readFile(path),
  );
  return Array.from(
    new Uint8Array(digest),
    (b) => b.toString(16).padStart(2, "0"),
  )
    .join("");
}

/** A valid config: no admin API, one host route on a free port. */
function goodConfig(
  region: string,
  extra: { device?: Record<string, unknown>; [k: string]: unknown } = {},
): Record<string, unknown> {
  const { device, ...rest } = extra;
  return {
    device: { region, size: "1MiB", ...device },
    admin: false,
    routes: [{
      name: "web",
      from: { type: "tcp", port: 0 },
      to: { type: "vsock", port: 80 },
    }],
    ...rest,
  };
}

/**
 * Writes `config` (an object, or raw text) to a file in a fresh temporary
 * directory, runs `fn` with its path, and removes the directory and every
 * path in `cleanup` afterwards.
 */
async function withConfig(
  config: unknown,
  cleanup: string[],
  fn: (file: string, dir: string) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "ivsock-cli-test-" });
  try {
    const file = `${dir}/ivsock.json`;
    await Deno.writeTextFile(
      file,
      typeof config === "string" ? config : JSON.stringify(config, null, 2),
    );
    await fn(file, dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
    for (const p of cleanup) await removeIfThere(p);
  }
}

/**
 * How long to leave `serve` after its ready line before signalling it.
 * `serve` prints "device ready" before it installs its SIGINT/SIGTERM
 * handlers, so a signal sent at once can meet the default action (see the
 * test "... as soon as it says the device is ready"); the tests of other
 * behaviour wait this long so that they do not fail on that race.
 */
const SETTLE_MS = 300;

/**
 * Runs `serve` on `file` until the device is ready (and, unless `settle`
 * is false, {@linkcode SETTLE_MS} more), then runs `fn` with the process;
 * the process is always killed and reaped.
 */
async function withServe(
  file: string,
  extraArgs: string[],
  fn: (cli: Cli) => Promise<void>,
  settle = true,
): Promise<void> {
  const cli = new Cli(["serve", "--config", file, ...extraArgs]);
  try {
    await cli.waitForStderr(READY, READY_MS);
    if (settle) await new Promise((r) => setTimeout(r, SETTLE_MS));
    await fn(cli);
  } finally {
    await cli.kill();
  }
}

/**
 * Leaves a real ivsock region at `region`: runs `serve`, waits until the
 * device is ready, and kills it with SIGKILL so that nothing is cleaned up.
 */
async function regionLeftByKilledServe(region: string): Promise<void> {
  await withConfig(goodConfig(region), [], async (file) => {
    await withServe(file, [], async (cli) => {
      const end = await cli.kill();
      assertEquals(end.signal, "SIGKILL");
    }, false);
  });
  assert(exists(region), "a killed serve leaves its region behind");
}

// --- help and usage errors -------------------------------------------------

for (const command of [[], ["serve"], ["guest"], ["demo"]]) {
  const name = ["ivsock", ...command, "--help"].join(" ");
  Deno.test(`${name} prints its usage on stdout and exits 0`, async () => {
    const out = await runCli([...command, "--help"]);
    assertEquals(out.code, 0, JSON.stringify(out));
    assertMatch(out.stdout, /Usage:/);
    assertEquals(out.stderr, "");
  });
}

Deno.test("the help of every command points only to documents that exist", async () => {
  const repo = new URL("../../", import.meta.url);
  for (const command of [[], ["serve"], ["guest"], ["demo"]]) {
    const out = await runCli([...command, "--help"]);
    for (const [doc] of out.stdout.matchAll(/\bdocs\/[\w.\/-]+\.md\b/g)) {
      assert(
        exists(new URL(doc, repo).pathname),
        `ivsock ${
          command.join(" ")
        } --help refers to ${doc}, which does not exist`,
      );
    }
  }
});

Deno.test("ivsock with no command prints the usage and exits 0", async () => {
  const out = await runCli([]);
  assertEquals(out.code, 0, JSON.stringify(out));
  assertMatch(out.stdout, /Usage:/);
});

/** Runs `args`, expects exit 2 and a message on stderr naming `names`. */
async function usageError(args: string[], ...names: string[]): Promise<void> {
  const out = await runCli(args);
  assertEquals(
    out.code,
    2,
    `exit code ${out.code} (signal ${out.signal}); stderr:\n${out.stderr}`,
  );
  assertEquals(out.stdout, "", "errors go to stderr");
  for (const n of names) {
    assert(out.stderr.includes(n), `stderr should name ${n}:\n${out.stderr}`);
  }
  assert(!/\bat .*\.ts:\d+/.test(out.stderr), `no stack trace:\n${out.stderr}`);
}

Deno.test("ivsock with an unknown command exits 2 naming it", async () => {
  await usageError(["bogus"], 'unknown command "bogus"');
});

Deno.test("ivsock serve with an unknown option exits 2 naming it", async () => {
  await usageError(["serve", "--bogus"], "--bogus");
});

Deno.test("ivsock serve without --config exits 2 saying --config is required", async () => {
  await usageError(["serve"], "--config", "required");
});

Deno.test("ivsock serve with a stray argument exits 2 naming it", async () => {
  await usageError(["serve", "ivsock.json"], "ivsock.json");
});

Deno.test("ivsock guest without --region exits 2 naming --region", async () => {
  await usageError(["guest"], "--region");
});

Deno.test("ivsock guest --expose without a target exits 2 naming the option", async () => {
  await usageError(
    ["guest", "--region", shmPath("unused"), "--expose", "80"],
    "--expose",
    '"80"',
  );
});

Deno.test("ivsock guest --queue-size 100 exits 2 saying it must be a power of two", async () => {
  await usageError(
    ["guest", "--region", shmPath("unused"), "--queue-size", "100"],
    "--queue-size",
    "power of two",
    "100",
  );
});

Deno.test("ivsock demo --http-port 70000 exits 2 naming the option and the range", async () => {
  await usageError(
    ["demo", "--http-port", "70000"],
    "--http-port",
    "65535",
    "70000",
  );
});

Deno.test("ivsock serve --log-format xml exits 2 before creating the region", async () => {
  const region = shmPath("logfmt");
  await withConfig(goodConfig(region), [region], async (file) => {
    await usageError(
      ["serve", "--config", file, "--log-format", "xml"],
      "--log-format",
      '"xml"',
    );
    assert(!exists(region), "no region file created");
  });
});

// --- config errors -----------------------------------------------------------

Deno.test("ivsock serve with a config file that does not exist exits 2 naming the file", async () => {
  const dir = await Deno.makeTempDir({ prefix: "ivsock-cli-test-" });
  try {
    const file = `${dir}/missing.json`;
    const out = await runCli(["serve", "--config", file]);
    assertEquals(out.code, 2, JSON.stringify(out));
    assert(
      out.stderr.includes(`${file}: cannot read the config file: no such file`),
      out.stderr,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("ivsock serve with a config file that is not JSON exits 2 and creates nothing", async () => {
  const region = shmPath("badjson");
  const text = `{ "device": { "region": "${region}", }, }`;
  await withConfig(text, [region], async (file) => {
    const out = await runCli(["serve", "--config", file]);
    assertEquals(out.code, 2, JSON.stringify(out));
    assert(out.stderr.includes(`${file}: not valid JSON`), out.stderr);
    assertMatch(out.stderr, /position \d+/);
    assert(!exists(region), "no region file created");
  });
});

Deno.test("ivsock serve with a config error exits 2 naming the field and creates nothing", async () => {
  const region = shmPath("cfgerr");
  const config = goodConfig(region);
  (config.routes as Array<{ to: unknown }>)[0]!.to = {
    type: "vsock",
    port: -1,
  };
  await withConfig(config, [region], async (file) => {
    const out = await runCli(["serve", "--config", file]);
    assertEquals(out.code, 2, JSON.stringify(out));
    assert(
      out.stderr.includes(
        "routes[0].to.port: expected an integer from 0 to 4294967294, received -1",
      ),
      out.stderr,
    );
    assert(!exists(region), "no region file created");
  });
});

// --- start-up failures -----------------------------------------------------

/** Runs `serve` on `file`; expects exit 1 and returns stderr. */
async function startupFailure(
  file: string,
  timeoutMs = 20_000,
): Promise<string> {
  const out = await runCli(["serve", "--config", file], timeoutMs);
  assertEquals(
    out.code,
    1,
    `exit code ${out.code} (signal ${out.signal}); stderr:\n${out.stderr}`,
  );
  assertMatch(out.stderr, /^ivsock: /m);
  assert(!/unexpected error/.test(out.stderr), out.stderr);
  assert(!READY.test(out.stderr), `never said ready:\n${out.stderr}`);
  return out.stderr;
}

Deno.test("ivsock serve exits 1 when the region's directory does not exist", async () => {
  const dir = `/dev/shm/ivsock-nope-${Deno.pid}`;
  const region = `${dir}/r`;
  await withConfig(goodConfig(region), [dir], async (file) => {
    const stderr = await startupFailure(file);
    assert(stderr.includes("device.region"), stderr);
    assert(stderr.includes(region), stderr);
    assertMatch(stderr, /No such file or directory|does not exist/);
    assert(!exists(dir), "nothing created");
  });
});

Deno.test("ivsock serve exits 1 on a region file holding other data, and leaves it untouched", async () => {
  const region = shmPath("other");
  const data = new Uint8Array(1 << 20);
  for (let i = 0; i < data.length; i++) data[i] = (i * 7 + 1) & 0xff;
  await Deno.writeFile(region, data);
  await withConfig(goodConfig(region), [region], async (file) => {
    const before = await sha256(region);
    const stderr = await startupFailure(file);
    assert(stderr.includes(region), stderr);
    assertMatch(stderr, /ivsock magic/);
    assertEquals(await sha256(region), before, "the file is untouched");
  });
});

Deno.test("ivsock serve exits 1 on a region of another layout version, naming both, and leaves it untouched", async () => {
  const region = shmPath("version");
  await withConfig(goodConfig(region), [region], async (file) => {
    await regionLeftByKilledServe(region);
    const bytes = await Deno.readFile(region);
    const view = new DataView(bytes.buffer);
    assertEquals(view.getUint32(0, true), 0x4b535649, "the ivsock magic");
    const ours = view.getUint16(4, true);
    const other = ours + 1;
    view.setUint16(4, other, true);
    await Deno.writeFile(region, bytes);
    const before = await sha256(region);

    const stderr = await startupFailure(file);
    assert(stderr.includes(region), stderr);
    assertMatch(stderr, new RegExp(`version ${other}\\b`));
    assertMatch(stderr, new RegExp(`version ${ours}\\b`));
    assertEquals(await sha256(region), before, "the file is untouched");
  });
});

Deno.test("ivsock serve exits 1 on an ivsock region that was resized, and leaves it untouched", async () => {
  const region = shmPath("resized");
  await withConfig(
    goodConfig(region, { device: { size: "2MiB" } }),
    [region],
    async (file) => {
      await regionLeftByKilledServe(region); // 1 MiB
      await Deno.truncate(region, 2 << 20);
      const before = await sha256(region);
      const stderr = await startupFailure(file);
      assert(stderr.includes(region), stderr);
      assertMatch(stderr, /1048576/);
      assertMatch(stderr, /2097152/);
      assertMatch(stderr, /resized/);
      assertEquals(await sha256(region), before, "the file is untouched");
    },
  );
});

Deno.test("ivsock serve exits 1 on a region file whose size is not a power of two, naming it", async () => {
  const region = shmPath("5000");
  await Deno.writeFile(region, new Uint8Array(5000));
  await withConfig(goodConfig(region), [region], async (file) => {
    const stderr = await startupFailure(file);
    assert(stderr.includes(region), stderr);
    assertMatch(stderr, /\b5000 bytes\b/);
    assertEquals(Deno.statSync(region).size, 5000, "the file is untouched");
  });
});

Deno.test("ivsock serve exits 1 when the doorbell socket's directory does not exist, and removes the region it created", async () => {
  const region = shmPath("doorbell");
  const socketDir = `/tmp/ivsock-cli-test-nope-${Deno.pid}`;
  const socket = `${socketDir}/ivshmem.sock`;
  await withConfig(
    goodConfig(region, { device: { doorbell: { socket } } }),
    [region, socketDir],
    async (file) => {
      const stderr = await startupFailure(file);
      assert(stderr.includes("device.doorbell.socket"), stderr);
      assert(stderr.includes(socket), stderr);
      assert(!exists(region), "the region file serve created is removed");
      assert(!exists(socketDir), "nothing created");
    },
  );
});

Deno.test("ivsock serve exits 1 naming the route when its TCP port is in use, and removes the region", async () => {
  const region = shmPath("inuse");
  const holder = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  try {
    const port = holder.addr.port;
    const config = goodConfig(region);
    (config.routes as Array<{ from: unknown }>)[0]!.from = {
      type: "tcp",
      port,
    };
    await withConfig(config, [region], async (file) => {
      const stderr = await startupFailure(file);
      assert(stderr.includes('route "web"'), stderr);
      assert(stderr.includes(`127.0.0.1:${port}`), stderr);
      assertMatch(stderr, /in use/);
      assert(!exists(region), "the region file serve created is removed");
    });
  } finally {
    holder.close();
  }
});

Deno.test("ivsock serve exits 1 on a region another running serve holds, and the first keeps running", async () => {
  const region = shmPath("twice");
  await withConfig(goodConfig(region), [region], async (file) => {
    await withServe(file, [], async (first) => {
      // A second device would be up within a second or two; one still
      // running after this long did not refuse the region.
      const stderr = await startupFailure(file, 8_000);
      assert(stderr.includes(region), stderr);
      assertMatch(stderr, /in use|already/);
      assert(exists(region), "the first serve's region stays");
      first.signal("SIGTERM");
      const end = await first.finished(STOP_MS);
      assertEquals(end.code, 0, JSON.stringify(end));
    });
  });
});

// --- running and stopping --------------------------------------------------

for (const signal of ["SIGTERM", "SIGINT"] as const) {
  Deno.test(`ivsock serve stops on ${signal}, exits 0 and removes its region`, async () => {
    const region = shmPath(signal.toLowerCase());
    await withConfig(goodConfig(region), [region], async (file) => {
      await withServe(file, [], async (cli) => {
        assert(exists(region), "the region exists while serving");
        const ready = cli.stderrLines.find((l) => READY.test(l))!;
        assert(ready.includes(region), ready);
        cli.signal(signal);
        const end = await cli.finished(STOP_MS);
        assertEquals(end.code, 0, JSON.stringify(end));
        assertEquals(end.signal, null);
        assertMatch(end.stderr, new RegExp(`${signal}: stopping`));
        assert(!exists(region), "the region file is removed");
      });
    });
  });
}

Deno.test("ivsock serve handles a SIGTERM sent as soon as it says the device is ready", async () => {
  // A supervisor that waits for the ready line and then stops the service
  // must not find the region left behind.
  const region = shmPath("early");
  await withConfig(goodConfig(region), [region], async (file) => {
    await withServe(file, [], async (cli) => {
      cli.signal("SIGTERM");
      const end = await cli.finished(STOP_MS);
      assertEquals(end.code, 0, JSON.stringify(end));
      assert(!exists(region), "the region file is removed");
    }, false);
  });
});

Deno.test("ivsock serve re-attaches to a region a killed serve left behind, and leaves it on exit", async () => {
  const region = shmPath("reattach");
  await withConfig(goodConfig(region), [region], async (file) => {
    await regionLeftByKilledServe(region);
    await withServe(file, [], async (cli) => {
      cli.signal("SIGTERM");
      const end = await cli.finished(STOP_MS);
      assertEquals(end.code, 0, JSON.stringify(end));
    });
    assert(exists(region), "a region serve did not create is not removed");
  });
});

Deno.test("ivsock serve --log-format json writes every stderr line as JSON with time, level and msg", async () => {
  const region = shmPath("json");
  await withConfig(goodConfig(region), [region], async (file) => {
    await withServe(file, ["--log-format", "json"], async (cli) => {
      cli.signal("SIGTERM");
      const end = await cli.finished(STOP_MS);
      assertEquals(end.code, 0, JSON.stringify(end));
      const lines = end.stderr.split("\n").filter((l) => l !== "");
      assert(lines.length >= 3, end.stderr);
      for (const line of lines) {
        let entry: Record<string, unknown>;
        try {
          entry = JSON.parse(line);
        } catch {
          throw new Error(`not a JSON line: ${line}`);
        }
        assertEquals(typeof entry.time, "string", line);
        assert(!Number.isNaN(Date.parse(entry.time as string)), line);
        assert(
          ["debug", "info", "warn", "error"].includes(entry.level as string),
          line,
        );
        assertEquals(typeof entry.msg, "string", line);
      }
      assert(lines.some((l) => READY.test(JSON.parse(l).msg)), end.stderr);
    });
  });
});

Deno.test("ivsock serve uses the config's log format when no --log-format is given", async () => {
  const region = shmPath("cfgjson");
  await withConfig(
    goodConfig(region, { log: { format: "json", level: "info" } }),
    [region],
    async (file) => {
      await withServe(file, [], async (cli) => {
        const ready = cli.stderrLines.find((l) => READY.test(l))!;
        assertEquals(JSON.parse(ready).level, "info");
        cli.signal("SIGTERM");
        assertEquals((await cli.finished(STOP_MS)).code, 0);
      });
    },
  );
});
