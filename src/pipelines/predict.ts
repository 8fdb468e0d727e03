/**
 * Classifying image files: the pipeline behind `motivnet predict`, for library users too.
 * Files decode on the preprocessing pool (full size unless `fastDecode`), go to the model in
 * batches, and come back one record per file, in order; a file that cannot be decoded is
 * skipped and recorded in the skip log, never an error.
 */
import { readdirSync, statSync } from 'node:fs';
import path from 'node:path';

import { IMAGE_EXTENSIONS } from '../data/folders.js';
import type { FaceBox } from '../data/types.js';
import type { DetectedFace, FaceDetectionOptions } from '../faces.js';
import { attentionRows, type AttentionMaps } from '../explain.js';
import { concat, unpackImages, type Geometry, type RgbImage } from '../images.js';
import type { ClassScore, MotivNet, PredictOutput } from '../model.js';
import { batches, DEFAULT_MAX_PIXELS } from '../preprocess/batcher.js';
import type { PreprocessPool } from '../preprocess/pool.js';
import type { DecodeResult } from '../preprocess/types.js';
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
  /** Classify the part of each image inside this box (pixels of the upright image). */
  box?: FaceBox;
  /** Also give where the model looked, with the decoded image to draw it on. Default false. */
  explain?: boolean;
}

export interface PredictFileFacesOptions {
  /** How a face's crop reaches the model's input. Default 'letterbox'. */
  geometry?: 'letterbox' | 'stretch';
  /** Photographs decoded together, and faces per model call. Default 8. */
  batchSize?: number;
  /** How faces are found and framed. */
  detection?: FaceDetectionOptions;
  /** Largest image, in pixels. Default 64 megapixels. */
  maxPixels?: number;
  /** Where files that cannot be decoded are recorded. */
  skips: SkipLog;
  /** Also give where the model looked, with the model's view of each face. Default false. */
  explain?: boolean;
}

/** A face of a file, with the model's answer for it. */
export interface FaceFilePrediction extends DetectedFace {
  top: ClassScore;
  logits: Float32Array;
  probabilities: Float32Array;
  /** With `explain`: this face's class maps, and the face as the model saw it (bands cut off). */
  attention?: AttentionMaps;
  view?: RgbImage;
}

export interface FileFacesPrediction {
  /** The file as given. */
  file: string;
  /** The image's size after EXIF orientation: the space of the boxes. */
  width: number;
  height: number;
  /** Every face found, best detected first; [] when there is none. */
  faces: FaceFilePrediction[];
}

export interface FilePrediction {
  /** The file as given. */
  file: string;
  top: ClassScore;
  logits: Float32Array;
  probabilities: Float32Array;
  /** With `explain`: this image's class maps, and the decoded image they lie on. */
  attention?: AttentionMaps;
  image?: RgbImage;
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
  const samples = files.map((f) => ({ path: path.resolve(f), relPath: f, label: 0, box: opts.box }));
  const { inputHeight, inputWidth } = model.config.encoder;
  const batchSize = opts.batchSize ?? 8;
  for await (const b of batches(samples, { batchSize, decode: (t) => pool.decode(t), minWidth: inputWidth, minHeight: inputHeight, fastDecode: opts.fastDecode, skips: opts.skips })) {
    const r = await model.predict(b, { geometry: opts.geometry ?? 'letterbox', explain: opts.explain });
    const images = opts.explain ? unpackImages(b) : [];
    for (const [i, s] of b.samples.entries()) {
      const row = (values: Float32Array) => values.slice(i * r.numClasses, (i + 1) * r.numClasses);
      const explained = r.attention ? { attention: attentionRows(r.attention, i, 1), image: images[i] } : {};
      yield { file: s.relPath, top: r.top[i]!, logits: row(r.logits), probabilities: row(r.probabilities), ...explained };
    }
  }
}

/**
 * Each decodable file's faces, each classified, in the order given: files decode and their
 * faces are found and cropped on the preprocessing pool (the next batch while the model runs
 * this one), and the faces of a batch of files go to the model together, in calls of at most
 * `batchSize` faces.
 */
export async function* predictFileFaces(model: MotivNet, pool: PreprocessPool, files: readonly string[], opts: PredictFileFacesOptions): AsyncGenerator<FileFacesPrediction> {
  const { inputHeight: height, inputWidth: width } = model.config.encoder;
  const batchSize = opts.batchSize ?? 8;
  if (!Number.isInteger(batchSize) || batchSize < 1) throw new RangeError(`batchSize must be a positive integer, got ${batchSize}`);
  const resizeTo = { width, height, geometry: opts.geometry ?? 'letterbox' };
  const decodeGroup = (start: number) =>
    Promise.all(
      files.slice(start, start + batchSize).map((file) =>
        pool.decode({ path: path.resolve(file), faces: opts.detection ?? {}, resizeTo, minWidth: width, minHeight: height, maxPixels: opts.maxPixels ?? DEFAULT_MAX_PIXELS }),
      ),
    );
  let next = files.length > 0 ? decodeGroup(0) : undefined;
  try {
    for (let start = 0; next; start += batchSize) {
      const decoded = await next;
      // The next files decode while the model runs on these.
      next = start + batchSize < files.length ? decodeGroup(start + batchSize) : undefined;
      const found: { file: string; result: DecodeResult & { ok: true } }[] = [];
      decoded.forEach((r, i) => {
        const file = files[start + i]!;
        if (r.ok) found.push({ file, result: r });
        else opts.skips.record(file, r.reason);
      });
      const count = found.reduce((n, f) => n + f.result.faces!.length, 0);
      const r = count === 0 ? undefined : await predictInChunks(model, concat(found.map((f) => f.result.data)), count, { width, height }, batchSize, opts.explain ?? false);
      let row = 0;
      for (const { file, result } of found) {
        const faces = result.faces!.map((face, i) => {
          const slice = (values: Float32Array) => values.slice(row * r!.numClasses, (row + 1) * r!.numClasses);
          const explained = r!.attention ? { attention: attentionRows(r!.attention, row, 1), view: modelView(result.data, i, resizeTo) } : {};
          const answer = { ...face, top: r!.top[row]!, logits: slice(r!.logits), probabilities: slice(r!.probabilities), ...explained };
          row++;
          return answer;
        });
        yield { file, width: result.imageWidth!, height: result.imageHeight!, faces };
      }
    }
  } finally {
    // Left early: the decodes in flight are abandoned, and may fail when the pool shuts down.
    next?.catch(() => {});
  }
}

/**
 * `count` input-sized images back to back, in model calls of at most `batchSize`: the answers
 * of one call, joined (a batch of group photographs can hold many times `batchSize` faces).
 */
async function predictInChunks(model: MotivNet, pixels: Uint8Array, count: number, size: { width: number; height: number }, batchSize: number, explain: boolean): Promise<PredictOutput> {
  const parts: PredictOutput[] = [];
  const per = size.width * size.height * 3;
  for (let start = 0; start < count; start += batchSize) {
    const n = Math.min(batchSize, count - start);
    const chunk = { pixels: pixels.subarray(start * per, (start + n) * per), widths: new Array(n).fill(size.width), heights: new Array(n).fill(size.height) };
    parts.push(await model.predict(chunk, { geometry: 'none', explain }));
  }
  if (parts.length === 1) return parts[0]!;
  const join = (arrays: Float32Array[]) => {
    const out = new Float32Array(arrays.reduce((n, a) => n + a.length, 0));
    arrays.reduce((at, a) => (out.set(a, at), at + a.length), 0);
    return out;
  };
  const first = parts[0]!;
  return {
    logits: join(parts.map((p) => p.logits)),
    probabilities: join(parts.map((p) => p.probabilities)),
    batchSize: count,
    numClasses: first.numClasses,
    top: parts.flatMap((p) => p.top),
    ...(first.attention ? { attention: { ...first.attention, values: join(parts.map((p) => p.attention!.values)) } } : {}),
  };
}

/**
 * Crop `index` of input-sized crops back to back, as the model saw the face: with letterbox,
 * the middle square without the white bands; with stretch, all of it.
 */
function modelView(crops: Uint8Array, index: number, input: { width: number; height: number; geometry: 'letterbox' | 'stretch' }): RgbImage {
  const { width, height } = input;
  const start = index * width * height * 3;
  if (input.geometry === 'stretch') return { data: crops.subarray(start, start + width * height * 3), width, height };
  const top = Math.floor((height - width) / 2);
  const from = start + top * width * 3;
  return { data: crops.subarray(from, from + width * width * 3), width, height: width };
}
