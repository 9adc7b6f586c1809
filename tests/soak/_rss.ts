/**
 * Resident memory of child processes over a soak: sampled from
 * `/proc/<pid>/status` (VmRSS) every few seconds, summarised as first and
 * last values, the mean of the first and last quarter of the run, and a
 * least-squares slope in KiB per minute (over the whole run and over its
 * second half, after warm-up).
 *
 * @module
 */

/** One sample: milliseconds since the sampler started, KiB per process. */
export interface RssSample {
  t: number;
  kib: Record<string, number>;
}

/** A process's memory over the run. */
export interface RssSummary {
  samples: number;
  startKib: number;
  endKib: number;
  maxKib: number;
  firstQuarterKib: number;
  lastQuarterKib: number;
  /** Last-quarter mean minus first-quarter mean. */
  driftKib: number;
  slopeKibPerMin: number;
  secondHalfSlopeKibPerMin: number;
}

/** VmRSS of `pid` in KiB, or null if the process is gone. */
export function readRssKib(pid: number): number | null {
  try {
    const status = Deno.readTextFileSync(`/proc/${pid}/status`);
    const m = /^VmRSS:\s+(\d+)\s+kB$/m.exec(status);
    return m ? Number(m[1]) : null;
  } catch {
    return null;
  }
}

/** Samples the named processes every `everyMs` until stopped. */
export class RssSampler {
  readonly samples: RssSample[] = [];
  #pids: Record<string, number>;
  #started = performance.now();
  #timer: ReturnType<typeof setInterval>;

  constructor(pids: Record<string, number>, everyMs: number) {
    this.#pids = pids;
    this.sample();
    this.#timer = setInterval(() => this.sample(), everyMs);
  }

  /** Takes one sample now. */
  sample(): void {
    const kib: Record<string, number> = {};
    for (const [name, pid] of Object.entries(this.#pids)) {
      const v = readRssKib(pid);
      if (v !== null) kib[name] = v;
    }
    this.samples.push({ t: performance.now() - this.#started, kib });
  }

  /** Takes a last sample and stops. */
  stop(): void {
    clearInterval(this.#timer);
    this.sample();
  }

  /** The summary for process `name`. */
  summary(name: string): RssSummary {
    const points = this.samples.flatMap((s) =>
      s.kib[name] === undefined ? [] : [{ t: s.t, v: s.kib[name]! }]
    );
    if (points.length === 0) {
      throw new Error(`no RSS samples for ${name}`);
    }
    const quarter = Math.max(1, Math.floor(points.length / 4));
    const mean = (xs: { v: number }[]) =>
      xs.reduce((a, p) => a + p.v, 0) / xs.length;
    const firstQ = mean(points.slice(0, quarter));
    const lastQ = mean(points.slice(-quarter));
    return {
      samples: points.length,
      startKib: points[0]!.v,
      endKib: points[points.length - 1]!.v,
      maxKib: Math.max(...points.map((p) => p.v)),
      firstQuarterKib: Math.round(firstQ),
      lastQuarterKib: Math.round(lastQ),
      driftKib: Math.round(lastQ - firstQ),
      slopeKibPerMin: round1(slope(points)),
      secondHalfSlopeKibPerMin: round1(
        slope(points.slice(Math.floor(points.length / 2))),
      ),
    };
  }
}

/** Least-squares slope of v over t, in units of v per minute. */
function slope(points: { t: number; v: number }[]): number {
  const n = points.length;
  if (n < 2) return 0;
  const mt = points.reduce((a, p) => a + p.t, 0) / n;
  const mv = points.reduce((a, p) => a + p.v, 0) / n;
  let num = 0;
  let den = 0;
  for (const p of points) {
    num += (p.t - mt) * (p.v - mv);
    den += (p.t - mt) ** 2;
  }
  return den === 0 ? 0 : (num / den) * 60_000;
}

function round1(x: number): number {
  return Math.round(x * 10) / 10;
}
