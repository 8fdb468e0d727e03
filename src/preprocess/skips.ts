/** The record of files the pipeline skipped: each with its path and reason, and counts. */
export interface Skip {
  path: string;
  reason: string;
}

export class SkipLog {
  readonly entries: Skip[] = [];

  record(path: string, reason: string): void {
    this.entries.push({ path, reason });
  }

  get count(): number {
    return this.entries.length;
  }

  /** Skips per reason kind (the text before any parenthesis). */
  counts(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const { reason } of this.entries) {
      const kind = reason.replace(/\s*\(.*$/, '');
      out[kind] = (out[kind] ?? 0) + 1;
    }
    return out;
  }

  /** One line for a summary: "3 skipped: 2 missing file, 1 not an image". */
  summary(): string {
    if (this.count === 0) return 'no files skipped';
    const parts = Object.entries(this.counts()).map(([kind, n]) => `${n} ${kind}`);
    return `${this.count} skipped: ${parts.join(', ')}`;
  }
}
