/**
 * Progress of a long loop: a bar redrawn in place on a terminal (epoch, step, loss, images/s,
 * ETA), and plain log lines every few seconds when stdout is a file or a pipe (CI logs).
 */
export interface ProgressOptions {
  label: string;
  total: number;
  stream?: NodeJS.WriteStream;
  /** Seconds between log lines when not on a terminal. */
  logEvery?: number;
}

function duration(seconds: number): string {
  if (!Number.isFinite(seconds)) return '?';
  const s = Math.round(seconds);
  const m = Math.floor(s / 60);
  return m > 0 ? `${m}m${String(s % 60).padStart(2, '0')}s` : `${s}s`;
}

export class Progress {
  private readonly start = performance.now();
  private lastLog = 0;
  private readonly stream: NodeJS.WriteStream;
  private readonly tty: boolean;
  private done = 0;
  private images = 0;

  constructor(private readonly opts: ProgressOptions) {
    this.stream = opts.stream ?? process.stdout;
    this.tty = Boolean(this.stream.isTTY);
  }

  /** `done` of `total` units finished, `images` images seen, and the fields to show. */
  update(done: number, images: number, fields: Record<string, string>): void {
    this.done = done;
    this.images = images;
    const elapsed = (performance.now() - this.start) / 1000;
    const rate = images / Math.max(elapsed, 1e-9);
    const eta = done > 0 ? (elapsed / done) * (this.opts.total - done) : Number.NaN;
    const info = Object.entries(fields).map(([k, v]) => `${k} ${v}`).join('  ');
    const tail = `${done}/${this.opts.total}  ${info}  ${rate.toFixed(1)} img/s  ETA ${duration(eta)}`;
    if (this.tty) {
      const width = 24;
      const filled = Math.round((width * done) / Math.max(1, this.opts.total));
      const bar = '#'.repeat(filled) + '-'.repeat(width - filled);
      const columns = this.stream.columns ?? 120;
      this.stream.write(`\r${`${this.opts.label} [${bar}] ${tail}`.slice(0, columns - 1)}\x1b[K`);
    } else if (elapsed - this.lastLog >= (this.opts.logEvery ?? 10) || done === this.opts.total) {
      this.lastLog = elapsed;
      this.stream.write(`${this.opts.label} ${tail}\n`);
    }
  }

  /** Ends the bar's line. */
  finish(): void {
    if (this.tty) this.stream.write('\n');
  }

  get imagesPerSecond(): number {
    return this.images / Math.max((performance.now() - this.start) / 1000, 1e-9);
  }

  get completed(): number {
    return this.done;
  }
}
