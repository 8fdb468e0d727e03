/**
 * Balanced sampling and the train/validation split, as the MotivNet paper undoes AffectNet's
 * class imbalance: simple random sampling without replacement of n images per class, n = the
 * smallest class's size (or a cap), then a seeded split, 9:1 by default. Inputs are put in a canonical order first, so
 * the same seed gives the same sample, split and epoch order on any machine, whatever order
 * the file system listed them in.
 */
import { classNames } from './labels.js';
import { createRng, shuffle, type Rng } from './random.js';
import type { ClassCount, Sample } from './types.js';

export interface SampleReport {
  /** Images per class before and after sampling. */
  before: number[];
  after: number[];
  /** Images taken from each class; absent without balanced sampling. */
  perClass?: number;
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
  /** Fraction held out for validation. Default 0.1 (the paper's 9:1). */
  validationFraction?: number;
  /**
   * Hold out the fraction of every class (default), so both parts keep the class balance; or
   * of the whole set at random, as the upstream code's `random_split` does.
   */
  stratified?: boolean;
}

/** A seeded split, stratified by class unless asked otherwise. */
export function splitTrainValidation(samples: readonly Sample[], classes: ClassCount, opts: SplitOptions): { train: Sample[]; validation: Sample[] } {
  const fraction = opts.validationFraction ?? 0.1;
  if (!(fraction >= 0 && fraction < 1)) throw new RangeError(`validationFraction must be in [0, 1), got ${fraction}`);
  const out = { train: [] as Sample[], validation: [] as Sample[] };
  const groups = groupByClass(samples, classes);
  if (opts.stratified === false) {
    holdOut(groups.flat(), fraction, createRng(opts.seed, 5), out);
  } else {
    groups.forEach((group, label) => holdOut(group, fraction, createRng(opts.seed, 2, label), out));
  }
  return out;
}

/**
 * Holds out a random `fraction` of `items` (in canonical order) into `out.validation` and the
 * rest into `out.train`, both keeping the canonical order: the draw picks positions, so
 * nothing is sorted again (at AffectNet's size, sorting was most of the split's time).
 */
function holdOut(items: Sample[], fraction: number, rng: Rng, out: { train: Sample[]; validation: Sample[] }): void {
  const order = shuffle(Array.from(items, (_, i) => i), rng);
  const held = new Uint8Array(items.length);
  for (let i = 0; i < Math.round(items.length * fraction); i++) held[order[i]!] = 1;
  items.forEach((s, i) => (held[i] ? out.validation : out.train).push(s));
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
