/** What the commands share: number parsers, the precision and face options, the metrics table. */
import { InvalidArgumentError, Option, type Command } from 'commander';

import type { ClassCount } from '../data/types.js';
import { checkDetectionOptions, type FaceDetectionOptions, type FacesOption } from '../faces.js';
import type { Metrics } from '../train/metrics.js';

export const num = (what: string) => (v: string) => {
  const n = Number(v);
  if (v.trim() === '' || !Number.isFinite(n)) throw new InvalidArgumentError(`${what} must be a number, got '${v}'`);
  return n;
};
/**
 * `--precision` of every command that loads a model; unset means the model's default, f32.
 * `training`: for `train`, which cannot take int8 (inference only).
 */
export const precisionOption = ({ training = false } = {}) =>
  training
    ? new Option('--precision <p>', 'compute dtype: f32 (default), or bf16 on CUDA or on a CPU with AVX512_BF16 (weights stay f32)').choices(['f32', 'bf16'])
    : new Option('--precision <p>', 'compute dtype: f32 (default), bf16 on CUDA or on a CPU with AVX512_BF16, or int8 on a CPU with AVX512-VNNI (the encoder\'s products)').choices(['f32', 'bf16', 'int8']);

export const int = (what: string) => (v: string) => {
  const n = num(what)(v);
  if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError(`${what} must be a whole number, got '${v}'`);
  return n;
};
export const classes = (v: string): ClassCount => {
  if (v !== '7' && v !== '8') throw new InvalidArgumentError(`must be 7 or 8, got '${v}'`);
  return Number(v) as ClassCount;
};

/** `--faces whole|detect|x,y,width,height`. */
export const facesArg = (v: string): FacesOption => {
  if (v === 'whole' || v === 'detect') return v;
  const parts = v.split(',').map(Number);
  if (parts.length !== 4 || !parts.every(Number.isFinite) || parts[0]! < 0 || parts[1]! < 0 || parts[2]! < 1 || parts[3]! < 1) {
    throw new InvalidArgumentError(`must be whole, detect, or a box x,y,width,height in pixels, got '${v}'`);
  }
  const [x, y, width, height] = parts as [number, number, number, number];
  return { x, y, width, height };
};

/** The detector's options of `predict` and `serve`: `--face-margin`, `--min-face-score`, `--max-faces`. */
export function addFaceDetectionOptions(command: Command): Command {
  return command
    .option('--face-margin <m>', "with --faces detect: the crop's margin around a face box, a fraction of its larger side on each side", num('--face-margin'), 0.25)
    .option('--min-face-score <s>', 'with --faces detect: leave out faces the detector scores below this (0.5, its own threshold, to 1)', num('--min-face-score'), 0.5)
    .option('--max-faces <n>', 'with --faces detect: at most this many faces an image, best first', int('--max-faces'), 16)
    .option('--small-faces', 'with --faces detect: also look for small faces in tiles of the image (slower)')
    .option('--upright', 'with --faces detect: turn each face so its eyes are level before classifying it');
}

/** What `addFaceDetectionOptions` parsed, for the library. */
export function faceDetectionOptions(opts: { faceMargin: number; minFaceScore: number; maxFaces: number; smallFaces?: boolean; upright?: boolean }): FaceDetectionOptions {
  const options = { margin: opts.faceMargin, minScore: opts.minFaceScore, maxFaces: opts.maxFaces, smallFaces: Boolean(opts.smallFaces), upright: Boolean(opts.upright) };
  try {
    checkDetectionOptions(options);
  } catch (err) {
    // Named as the flags are.
    const flags: Record<string, string> = { margin: '--face-margin', minScore: '--min-face-score', maxFaces: '--max-faces' };
    throw new InvalidArgumentError((err as Error).message.replace(/^(\w+)/, (name) => flags[name] ?? name));
  }
  return options;
}

export function metricsTable(m: Metrics): string {
  const pct = (v: number) => `${(100 * v).toFixed(2)}%`;
  return [
    'accuracy   AUROC      F1         precision  recall     loss',
    [pct(m.accuracy), pct(m.auroc), pct(m.f1), pct(m.precision), pct(m.recall), m.loss.toFixed(3)].map((v) => v.padEnd(10)).join(' '),
  ].join('\n');
}
