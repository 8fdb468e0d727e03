/**
 * Balanced sampling and the train/validation split (REFERENCE.md section 4): simple random
 * sampling without replacement of n images per class, n = the smallest class's size (or a
 * cap), then a seeded split, 9:1 by default. Inputs are put in a canonical order first, so
 * the same seed gives the same sample, split and epoch order on any machine, whatever order
 * the file system listed them in.
 */
import { classNames } from './labels.js';
import { createRng, shuffle } from './random.js';
import type { ClassCount, Sample } from './types.js';

export interface SampleReport {
  /** Images per class before and after sampling. */
  before: number[];
  after: number[];
  perClass: number;
}

export interface BalancedSampleOptions {
  seed: number;
  /** At most this many images per class. */
  capPerClass?: number;
}

const byPath = (a: Sample, b: Sample) => (a.relPath < b.relPath ? -1 : a.relPath > b.relPath ? 1 : 0);

function groupByClass(samples: readonly Sample[], classes: ClassCount): Sample[][] {
  const groups: Sample[][] = Array.from({ length: classes }, () => []);
  for (const s of samples) {
    if (s.label < 0 || s.label >= classes) throw new RangeError(`sample ${s.relPath} has label ${s.label}, outside 0..${classes - 1}`);
    groups[s.label]!.push(s);
  }
  return groups.map((g) => g.sort(byPath));
}

export function balancedSample(samples: readonly Sample[], classes: ClassCount, opts: BalancedSampleOptions): { samples: Sample[]; report: SampleReport } {
  const groups = groupByClass(samples, classes);
  const before = groups.map((g) => g.length);
  const names = classNames(classes);
  const empty = before.findIndex((n) => n === 0);
  if (empty >= 0) {
    throw new Error(`class ${empty} (${names[empty]}) has no images: a balanced sample needs every class of the ${classes}-class label set`);
  }
  let perClass = Math.min(...before);
  if (opts.capPerClass !== undefined) {
    if (!Number.isInteger(opts.capPerClass) || opts.capPerClass < 1) throw new RangeError(`capPerClass must be a positive integer, got ${opts.capPerClass}`);
    perClass = Math.min(perClass, opts.capPerClass);
  }
  const picked = groups.flatMap((g, label) => shuffle(g.slice(), createRng(opts.seed, 1, label)).slice(0, perClass).sort(byPath));
  return { samples: picked, report: { before, after: groups.map(() => perClass), perClass } };
}

export interface SplitOptions {
  seed: number;
  /** Fraction of each class held out for validation. Default 0.1 (the reference's 9:1). */
  validationFraction?: number;
}

/** A seeded split, stratified by class so both parts stay balanced. */
export function splitTrainValidation(samples: readonly Sample[], classes: ClassCount, opts: SplitOptions): { train: Sample[]; validation: Sample[] } {
  const fraction = opts.validationFraction ?? 0.1;
  if (!(fraction >= 0 && fraction < 1)) throw new RangeError(`validationFraction must be in [0, 1), got ${fraction}`);
  const train: Sample[] = [];
  const validation: Sample[] = [];
  groupByClass(samples, classes).forEach((group, label) => {
    const shuffled = shuffle(group, createRng(opts.seed, 2, label));
    const held = Math.round(shuffled.length * fraction);
    validation.push(...shuffled.slice(0, held).sort(byPath));
    train.push(...shuffled.slice(held).sort(byPath));
  });
  return { train, validation };
}

/** The order of one epoch: a permutation fixed by the seed and the epoch number. */
export function epochOrder<T>(items: readonly T[], seed: number, epoch: number): T[] {
  return shuffle(items.slice(), createRng(seed, 3, epoch));
}

/** A small table of counts per class, for the run's report. */
export function formatSampleReport(report: SampleReport, classes: ClassCount, dropped: Record<string, number> = {}): string {
  const names = classNames(classes);
  const width = Math.max(...names.map((n) => n.length));
  const lines = ['class'.padEnd(width) + '   before   sampled'];
  names.forEach((name, i) => lines.push(`${name.padEnd(width)} ${String(report.before[i]).padStart(8)} ${String(report.after[i]).padStart(9)}`));
  for (const [reason, n] of Object.entries(dropped)) lines.push(`dropped: ${reason}: ${n}`);
  return lines.join('\n');
}
