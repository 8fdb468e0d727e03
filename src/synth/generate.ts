/**
 * `motivnet synth`: the procedural face data set in AffectNet's layout: `images/train/*.jpg`,
 * `images/test/*.jpg`, and `training.csv` / `validation.csv` with face boxes and expression
 * codes, so the AffectNet reader serves it like real data. The training portion is imbalanced
 * in AffectNet's order (happy most, contempt least) so that the balanced sampling matters; the
 * test portion has the same count per class. A seed fixes every byte.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';

import sharp from 'sharp';

import { createRng, shuffle, type Rng } from '../data/random.js';
import { cuesFor, faceBox, faceSvg, lookFor } from './faces.js';

/** AffectNet's manually annotated training set, images per expression code 0-7. */
export const AFFECTNET_TRAIN_COUNTS = [74874, 134415, 25459, 14090, 6378, 3803, 24882, 3750] as const;

/** Typical valence and arousal per class, written to the CSV as AffectNet has them. */
const VALENCE_AROUSAL: [number, number][] = [
  [0, 0], [0.75, 0.35], [-0.65, -0.3], [0.2, 0.75], [-0.6, 0.7], [-0.65, 0.35], [-0.55, 0.7], [-0.4, 0.2],
];

export interface SynthOptions {
  out: string;
  seed?: number;
  /** Training images of the rarest class (contempt); the others scale by AffectNet's ratios. */
  trainPerClass?: number;
  testPerClass?: number;
  width?: number;
  height?: number;
  /**
   * Exponent on AffectNet's class ratios: 1 (the default) gives its proportions (happy 36x
   * contempt), 0.5 their square root (6x), 0 a balanced set.
   */
  imbalance?: number;
}

export interface SynthResult {
  train: number[];
  test: number[];
  dir: string;
}

export function trainCounts(perClass: number, imbalance: number): number[] {
  const least = Math.min(...AFFECTNET_TRAIN_COUNTS);
  return AFFECTNET_TRAIN_COUNTS.map((n) => Math.round(perClass * (n / least) ** imbalance));
}

/** How many images `synthesize` will write for these options. */
export function plannedTotal(opts: SynthOptions): number {
  const train = trainCounts(opts.trainPerClass ?? 120, opts.imbalance ?? 1).reduce((a, b) => a + b, 0);
  return train + 8 * (opts.testPerClass ?? 40);
}

async function renderOne(file: string, emotion: number, rng: Rng, width: number, height: number) {
  const cues = cuesFor(emotion, rng);
  const look = lookFor(rng, width, height);
  const { data, info } = await sharp(Buffer.from(faceSvg(cues, look, width, height))).removeAlpha().raw().toBuffer({ resolveWithObject: true });
  // Sensor noise, drawn from the image's own stream.
  const sigma = 2 + 10 * rng();
  for (let i = 0; i < data.length; i++) {
    const n = (rng() + rng() + rng() - 1.5) * 2 * sigma;
    data[i] = Math.max(0, Math.min(255, Math.round(data[i]! + n)));
  }
  let img = sharp(data, { raw: { width: info.width, height: info.height, channels: 3 } });
  const blur = rng();
  if (blur < 0.5) img = img.blur(0.3 + 1.2 * blur);
  await img.jpeg({ quality: 90 }).toFile(file);
  return faceBox(look, width, height);
}

export async function synthesize(opts: SynthOptions, onProgress?: (done: number, total: number) => void): Promise<SynthResult> {
  const seed = opts.seed ?? 0;
  const width = opts.width ?? 96;
  const height = opts.height ?? 96;
  const perClass = opts.trainPerClass ?? 120;
  const testPer = opts.testPerClass ?? 40;
  for (const [name, v] of [['trainPerClass', perClass], ['testPerClass', testPer], ['width', width], ['height', height]] as const) {
    if (!Number.isInteger(v) || v < 1) throw new RangeError(`${name} must be a positive integer, got ${v}`);
  }
  if (width < 32 || height < 32) throw new RangeError(`size ${width}x${height} is too small to draw a face: at least 32x32`);
  const splits = [
    { name: 'train', csv: 'training.csv', counts: trainCounts(perClass, opts.imbalance ?? 1) },
    { name: 'test', csv: 'validation.csv', counts: new Array<number>(8).fill(testPer) },
  ];
  const total = splits.reduce((n, s) => n + s.counts.reduce((a, b) => a + b, 0), 0);
  let done = 0;
  for (const [splitIndex, split] of splits.entries()) {
    const dir = path.join(opts.out, 'images', split.name);
    mkdirSync(dir, { recursive: true });
    // Classes interleaved in a seeded order, so file names say nothing of the label.
    const labels = shuffle(split.counts.flatMap((n, c) => new Array<number>(n).fill(c)), createRng(seed, 20, splitIndex));
    const rows: string[] = ['subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal'];
    const chunk = 32; // sharp runs these on libuv's threads
    for (let start = 0; start < labels.length; start += chunk) {
      const part = labels.slice(start, start + chunk);
      const boxes = await Promise.all(
        part.map((emotion, k) => {
          const i = start + k;
          return renderOne(path.join(dir, `${String(i).padStart(5, '0')}.jpg`), emotion, createRng(seed, 21, splitIndex, i), width, height);
        }),
      );
      boxes.forEach((b, k) => {
        const i = start + k;
        const emotion = part[k]!;
        const [v, a] = VALENCE_AROUSAL[emotion]!;
        rows.push(`images/${split.name}/${String(i).padStart(5, '0')}.jpg,${b.x},${b.y},${b.width},${b.height},,${emotion},${v},${a}`);
      });
      done += part.length;
      onProgress?.(done, total);
    }
    writeFileSync(path.join(opts.out, split.csv), rows.join('\n') + '\n');
  }
  return { train: splits[0]!.counts, test: splits[1]!.counts, dir: opts.out };
}
