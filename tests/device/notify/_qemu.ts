/**
 * Runs `qemu-system-x86_64` for a test: finds it on PATH, talks a line
 * protocol (QMP or qtest) over its stdio with bounded waits, and always
 * reaps the process and closes its pipes so the sanitizers stay quiet.
 *
 * @module
 */

/** The binary the QEMU tests need. */
export const QEMU_BINARY = "qemu-system-x86_64";

/** The first `QEMU_BINARY` on PATH, or undefined. */
export function findQemu(): string | undefined {
  for (const dir of (Deno.env.get("PATH") ?? "").split(":")) {
    if (dir === "") continue;
    const candidate = `${dir}/${QEMU_BINARY}`;
    try {
      if (Deno.statSync(candidate).isFile) return candidate;
    } catch {
      // Not in this directory.
    }
  }
  return undefined;
}

/** A QEMU child with piped stdio; dispose to kill and reap it. */
export class QemuProcess implements AsyncDisposable {
  #child: Deno.ChildProcess;
  #stdin: WritableStreamDefaultWriter<Uint8Array>;
  #stdout: ReadableStreamDefaultReader<string>;
  #pending = "";
  #stderr: Promise<string>;
  #exited = false;
  #status: Promise<Deno.CommandStatus>;

  constructor(binary: string, args: string[]) {
    this.#child = new Deno.Command(binary, {
      args,
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.#stdin = this.#child.stdin.getWriter();
    this.#stdout = this.#child.stdout
      .pipeThrough(new TextDecoderStream()).getReader();
    this.#stderr = new Response(this.#child.stderr).text();
    this.#status = this.#child.status.then((s) => {
      this.#exited = true;
      return s;
    });
  }

  /** Whether the process is still running. */
  get running(): boolean {
    return !this.#exited;
  }

  /** Writes `line` and a newline to QEMU's stdin. */
  async send(line: string): Promise<void> {
    await this.#stdin.write(new TextEncoder().encode(line + "\n"));
  }

  /** The next stdout line; rejects at end of output or after `timeoutMs`. */
  async line(timeoutMs = 5000): Promise<string> {
    const deadline = performance.now() + timeoutMs;
    while (true) {
      const nl = this.#pending.indexOf("\n");
      if (nl >= 0) {
        const line = this.#pending.slice(0, nl);
        this.#pending = this.#pending.slice(nl + 1);
        return line;
      }
      const left = deadline - performance.now();
      if (left <= 0) {
        throw new Error(`QEMU printed no line within ${timeoutMs} ms`);
      }
      let timer: ReturnType<typeof setTimeout> | undefined;
      const timeout = new Promise<"timeout">((resolve) => {
        timer = setTimeout(() => resolve("timeout"), left);
      });
      const got = await Promise.race([this.#stdout.read(), timeout]);
      clearTimeout(timer);
      if (got === "timeout") {
        // The read stays pending; kill() ends it with end of output.
        throw new Error(`QEMU printed no line within ${timeoutMs} ms`);
      }
      if (got.done) throw new Error("QEMU closed its output");
      this.#pending += got.value;
    }
  }

  /**
   * Sends one qtest command and returns its reply without the "OK ";
   * rejects on "FAIL" or silence.
   */
  async qtest(command: string, timeoutMs = 5000): Promise<string> {
    await this.send(command);
    while (true) {
      const line = await this.line(timeoutMs);
      // Interrupt notices are interleaved when interception is on.
      if (line.startsWith("IRQ")) continue;
      if (line === "OK") return "";
      if (line.startsWith("OK ")) return line.slice(3);
      throw new Error(`qtest "${command}" answered "${line}"`);
    }
  }

  /** Sends one QMP command and returns its `return` value. */
  async qmp(execute: string, timeoutMs = 5000): Promise<unknown> {
    await this.send(JSON.stringify({ execute }));
    while (true) {
      const reply = JSON.parse(await this.line(timeoutMs));
      if ("return" in reply) return reply.return;
      if ("error" in reply) {
        throw new Error(`QMP ${execute} failed: ${JSON.stringify(reply)}`);
      }
      // Greeting and asynchronous events are skipped.
    }
  }

  /** Resolves true if QEMU exits by itself within `timeoutMs`. */
  async exitsWithin(timeoutMs: number): Promise<boolean> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<false>((resolve) => {
      timer = setTimeout(() => resolve(false), timeoutMs);
    });
    const exited = await Promise.race([this.#status.then(() => true), timeout]);
    clearTimeout(timer);
    return exited;
  }

  /** Kills QEMU (if still running), reaps it, and returns its stderr. */
  async kill(): Promise<{ status: Deno.CommandStatus; stderr: string }> {
    if (!this.#exited) {
      try {
        this.#child.kill("SIGKILL");
      } catch {
        // It exited between the check and the kill.
      }
    }
    const status = await this.#status;
    await this.#stdout.cancel().catch(() => {});
    await this.#stdin.close().catch(() => {});
    return { status, stderr: await this.#stderr };
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.kill().then(() => {});
  }
}
