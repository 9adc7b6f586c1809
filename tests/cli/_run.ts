/**
 * Runs the `ivsock` command line as a child process, black-box: stdout is
 * collected whole, stderr line by line (the logs go there), and every child
 * is bounded in time and always reaped.
 *
 * @module
 */

const MOD = new URL("../../mod.ts", import.meta.url).pathname;
const REPO = new URL("../../", import.meta.url).pathname;

/** How a finished child ended and what it printed. */
export interface Outcome {
  code: number;
  signal: Deno.Signal | null;
  stdout: string;
  stderr: string;
}

/** A running `ivsock` process. */
export class Cli {
  readonly args: string[];
  readonly stderrLines: string[] = [];
  #process: Deno.ChildProcess;
  #status: Promise<Deno.CommandStatus>;
  #exited = false;
  #stdout: Promise<string>;
  #stderr: Promise<void>;
  #waiters: Array<{ test: RegExp; resolve: (line: string) => void }> = [];

  constructor(args: string[]) {
    this.args = args;
    // A temporary directory of its own, removed once it has exited: a child
    // killed early (some tests SIGKILL it) cannot clean up its own (the
    // waker's socket directory lives there until its worker connects).
    const tmp = Deno.makeTempDirSync({ prefix: "ivsock-test-cli-" });
    this.#process = new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-all", MOD, ...args],
      cwd: REPO,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1", TMPDIR: tmp },
    }).spawn();
    this.#status = this.#process.status.then((s) => {
      this.#exited = true;
      Deno.removeSync(tmp, { recursive: true });
      return s;
    });
    this.#stdout = new Response(this.#process.stdout).text();
    this.#stderr = this.#readStderr();
  }

  async #readStderr(): Promise<void> {
    let buffered = "";
    const take = (line: string) => {
      this.stderrLines.push(line);
      for (const w of [...this.#waiters]) {
        if (w.test.test(line)) {
          this.#waiters.splice(this.#waiters.indexOf(w), 1);
          w.resolve(line);
        }
      }
    };
    for await (
      const chunk of this.#process.stderr.pipeThrough(new TextDecoderStream())
    ) {
      buffered += chunk;
      let nl: number;
      while ((nl = buffered.indexOf("\n")) >= 0) {
        take(buffered.slice(0, nl));
        buffered = buffered.slice(nl + 1);
      }
    }
    if (buffered !== "") take(buffered);
  }

  /** The process id, for signals. */
  get pid(): number {
    return this.#process.pid;
  }

  /**
   * Resolves with the first stderr line matching `test`; rejects after
   * `timeoutMs`, or as soon as the process exits without printing one.
   */
  waitForStderr(test: RegExp, timeoutMs: number): Promise<string> {
    const seen = this.stderrLines.find((l) => test.test(l));
    if (seen !== undefined) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const waiter = {
        test,
        resolve: (line: string) => {
          clearTimeout(timer);
          resolve(line);
        },
      };
      const fail = (why: string) => {
        const i = this.#waiters.indexOf(waiter);
        if (i < 0) return;
        this.#waiters.splice(i, 1);
        clearTimeout(timer);
        reject(
          new Error(
            `ivsock ${
              this.args.join(" ")
            }: ${why} before a line matching ${test}; stderr:\n  ${
              this.stderrLines.join("\n  ")
            }`,
          ),
        );
      };
      const timer = setTimeout(
        () => fail(`${timeoutMs} ms passed`),
        timeoutMs,
      );
      this.#waiters.push(waiter);
      this.#stderr.then(() => fail("stderr ended"));
    });
  }

  /**
   * Waits for the process to exit by itself and its output to end;
   * rejects after `timeoutMs` (the caller still has to {@linkcode kill}).
   */
  async finished(timeoutMs: number): Promise<Outcome> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () =>
          reject(
            new Error(
              `ivsock ${
                this.args.join(" ")
              }: still running after ${timeoutMs} ms; stderr:\n  ${
                this.stderrLines.join("\n  ")
              }`,
            ),
          ),
        timeoutMs,
      );
    });
    try {
      const status = await Promise.race([this.#status, timeout]);
      return await this.#outcome(status);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Sends `signal` if the process still runs. */
  signal(signal: Deno.Signal): void {
    if (this.#exited) return;
    try {
      this.#process.kill(signal);
    } catch {
      // It exited between the check and the kill.
    }
  }

  /** Kills the process (if still running) and reaps it and its output. */
  async kill(): Promise<Outcome> {
    this.signal("SIGKILL");
    return await this.#outcome(await this.#status);
  }

  async #outcome(status: Deno.CommandStatus): Promise<Outcome> {
    const [stdout] = await Promise.all([this.#stdout, this.#stderr]);
    return {
      code: status.code,
      signal: status.signal,
      stdout,
      stderr: this.stderrLines.join("\n"),
    };
  }
}

/** Runs `ivsock args` to completion within `timeoutMs`. */
export async function runCli(
  args: string[],
  timeoutMs = 20_000,
): Promise<Outcome> {
  const cli = new Cli(args);
  try {
    return await cli.finished(timeoutMs);
  } finally {
    await cli.kill();
  }
}
