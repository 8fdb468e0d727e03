/**
 * Classifying image files: the pipeline behind `motivnet predict`, for library users too.
 * Files decode on the preprocessing pool (full size unless `fastDecode`), go to the model in
 * batches, and come back one record per file, in order; a file that cannot be decoded is
 * skipped and recorded in the skip log, never an error.
 */
import { readdirSync, statSync } from 'node:fs';
import path from 'node:path';

import { IMAGE_EXTENSIONS } from '../data/folders.js';
import type { Geometry } from '../images.js';
import type { ClassScore, MotivNet } from '../model.js';
import { batches } from '../preprocess/batcher.js';
import type { PreprocessPool } from '../preprocess/pool.js';
import type { SkipLog } from '../preprocess/skips.js';

export interface PredictFilesOptions {
  /** How images reach the model's input: letterbox (the reference's inference) by default. */
  geometry?: Geometry;
  /** Images per model call. Default 8. */
  batchSize?: number;
  /** Shrink large JPEGs while decoding (faster; not the reference's pixels). Default false. */
  fastDecode?: boolean;
  /** Where files that cannot be decoded are recorded. */
  skips: SkipLog;
}

export interface FilePrediction {
  /** The file as given. */
  file: string;
  top: ClassScore;
  logits: Float32Array;
  probabilities: Float32Array;
}

/** Files and folders as given on a command line, folders expanded to the images in them (sorted). */
export function expandInputs(inputs: readonly string[]): string[] {
  return inputs.flatMap((p) => {
    let st;
    try {
      st = statSync(p);
    } catch {
      return [p]; // reported as missing when decoded
    }
    if (!st.isDirectory()) return [p];
    return readdirSync(p)
      .filter((f) => IMAGE_EXTENSIONS.has(path.extname(f).toLowerCase()))
      .sort()
      .map((f) => path.join(p, f));
  });
}

/** Each decodable file's prediction, in the order given. */
export async function* predictFiles(model: MotivNet, pool: PreprocessPool, files: readonly string[], opts: PredictFilesOptions): AsyncGenerator<FilePrediction> {
  const samples = files.map((f) => ({ path: path.resolve(f), relPath: f, label: 0 }));
  const { inputHeight, inputWidth } = model.config.encoder;
  const batchSize = opts.batchSize ?? 8;
  for await (const b of batches(samples, { batchSize, decode: (t) => pool.decode(t), minWidth: inputWidth, minHeight: inputHeight, fastDecode: opts.fastDecode, skips: opts.skips })) {
    const r = await model.predict(b, { geometry: opts.geometry ?? 'letterbox' });
    for (const [i, s] of b.samples.entries()) {
      const row = (values: Float32Array) => values.slice(i * r.numClasses, (i + 1) * r.numClasses);
      yield { file: s.relPath, top: r.top[i]!, logits: row(r.logits), probabilities: row(r.probabilities) };
    }
  }
}
