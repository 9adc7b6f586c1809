/**
 * Child Deno processes for cross-process tests: start one with a script and
 * arguments, read its stdout line by line, wait for a line that matches,
 * and always reap it (Deno's sanitizers check that nothing is left).
 *
 * @module
 */

/** A running child with line-oriented stdout. */
export class Child {
  readonly name: string;
  readonly process: Deno.ChildProcess;
  readonly lines: string[] = [];
  #waiters: Array<
    { test: (line: string) => boolean; resolve: (line: string) => void }
  > = [];
  #pump: Promise<void>;
  #status: Promise<Deno.CommandStatus>;
  #exited = false;

  /**
   * Starts `deno run --allow-all ...denoFlags script ...args`. Lines are
   * read from `lines` (stdout by default); the other stream goes to ours.
   */
  constructor(
    name: string,
    script: string | URL,
    args: string[],
    env: Record<string, string> = {},
    lines: "stdout" | "stderr" = "stdout",
    denoFlags: string[] = [],
  ) {
    this.name = name;
    this.process = new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-all", ...denoFlags, String(script), ...args],
      stdout: lines === "stdout" ? "piped" : "inherit",
      stderr: lines === "stderr" ? "piped" : "inherit",
      stdin: "null",
      env: { NO_COLOR: "1", ...env },
    }).spawn();
    this.#status = this.process.status.then((s) => {
      this.#exited = true;
      return s;
    });
    this.#pump = this.#read(
      lines === "stdout" ? this.process.stdout : this.process.stderr,
    );
  }

  async #read(stream: ReadableStream<Uint8Array>): Promise<void> {
    const decoder = new TextDecoderStream();
    let buffered = "";
    for await (const chunk of stream.pipeThrough(decoder)) {
      buffered += chunk;
      let nl: number;
      while ((nl = buffered.indexOf("\n")) >= 0) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        this.lines.push(line);
        for (const w of [...this.#waiters]) {
          if (w.test(line)) {
            this.#waiters.splice(this.#waiters.indexOf(w), 1);
            w.resolve(line);
          }
        }
      }
    }
  }

  /**
   * Resolves with the first line, already printed or still to come after
   * index `from`, that passes `test`; rejects after `timeoutMs`.
   */
  waitFor(
    test: (line: string) => boolean,
    timeoutMs: number,
    from = 0,
  ): Promise<string> {
    const seen = this.lines.slice(from).find(test);
    if (seen !== undefined) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const waiter = {
        test,
        resolve: (line: string) => {
          clearTimeout(timer);
          resolve(line);
        },
      };
      const timer = setTimeout(() => {
        this.#waiters.splice(this.#waiters.indexOf(waiter), 1);
        reject(
          new Error(
            `${this.name}: no matching line within ${timeoutMs} ms; last lines:\n  ${
              this.lines.slice(-8).join("\n  ")
            }`,
          ),
        );
      }, timeoutMs);
      this.#waiters.push(waiter);
    });
  }

  /**
   * Waits for the child to exit by itself (no signal) and for its output to
   * end; rejects after `timeoutMs`.
   */
  async exited(timeoutMs: number): Promise<Deno.CommandStatus> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () =>
          reject(
            new Error(`${this.name}: did not exit within ${timeoutMs} ms`),
          ),
        timeoutMs,
      );
    });
    try {
      const status = await Promise.race([this.#status, timeout]);
      await this.#pump;
      return status;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Sends `signal` (if still running) and waits for exit and end of output. */
  async stop(signal: Deno.Signal = "SIGTERM"): Promise<Deno.CommandStatus> {
    if (!this.#exited) {
      try {
        this.process.kill(signal);
      } catch {
        // It exited between the check and the kill.
      }
    }
    const status = await this.#status;
    await this.#pump;
    return status;
  }
}
