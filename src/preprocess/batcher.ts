/**
 * The batcher: decodes samples through the pool ahead of the model and packs each batch's
 * images back to back into one buffer with their sizes and labels, the form the core takes
 * without a copy. `prefetch` batches stay in flight, so the model does not wait on decoding
 * when the pool keeps up. A file that fails to decode is recorded in the skip log and left out
 * of its batch; a batch left empty is not yielded.
 */
import type { Sample } from '../data/types.js';
import { createRng } from '../data/random.js';
import type { SkipLog } from './skips.js';
import type { DecodeResult, DecodeTask } from './types.js';

export interface PackedBatch {
  pixels: Uint8Array;
  widths: number[];
  heights: number[];
  labels: Int32Array;
  samples: Sample[];
  /** Position in the input list of this batch's first slot (batches cover batchSize slots each, skipped or not). */
  offset: number;
}

export interface BatcherOptions {
  batchSize: number;
  /** Batches decoded ahead of the one being consumed. Default 2. */
  prefetch?: number;
  decode: (task: DecodeTask) => Promise<DecodeResult>;
  /** The model's input size: the floor of `fastDecode`'s shrink. */
  minWidth: number;
  minHeight: number;
  /** Shrink large JPEGs while decoding (see DecodeTask.fastDecode). Default false. */
  fastDecode?: boolean;
  /** Pixel-count limit per image. Default 64 megapixels. */
  maxPixels?: number;
  /** Mirror each image with this probability, drawn from a seeded stream per epoch. */
  flip?: { probability: number; seed: number; epoch: number };
  /** Or: the mirror decision of each sample, aligned with the input list. */
  flips?: readonly boolean[];
  skips: SkipLog;
}

export const DEFAULT_MAX_PIXELS = 64 * 1024 * 1024;

export function pack(decoded: { data: Uint8Array; width: number; height: number }[], samples: Sample[], offset = 0): PackedBatch {
  const pixels = new Uint8Array(decoded.reduce((n, d) => n + d.data.length, 0));
  let at = 0;
  for (const d of decoded) {
    pixels.set(d.data, at);
    at += d.data.length;
  }
  return {
    pixels,
    widths: decoded.map((d) => d.width),
    heights: decoded.map((d) => d.height),
    labels: Int32Array.from(samples, (s) => s.label),
    samples,
    offset,
  };
}

export async function* batches(samples: readonly Sample[], opts: BatcherOptions): AsyncGenerator<PackedBatch> {
  if (!Number.isInteger(opts.batchSize) || opts.batchSize < 1) throw new RangeError(`batchSize must be a positive integer, got ${opts.batchSize}`);
  const ahead = (opts.prefetch ?? 2) + 1;
  const rng = opts.flip ? createRng(opts.flip.seed, 4, opts.flip.epoch) : undefined;
  // Flips are drawn up front in sample order, so they do not depend on decoding speed.
  const flips = opts.flips ?? samples.map(() => (rng ? rng() < opts.flip!.probability : false));
  const inFlight: Promise<DecodeResult>[] = [];
  let next = 0;
  const fill = () => {
    while (next < samples.length && inFlight.length < ahead * opts.batchSize) {
      const s = samples[next]!;
      inFlight.push(
        opts.decode({
          path: s.path,
          box: s.box,
          flip: flips[next],
          fastDecode: opts.fastDecode,
          minWidth: opts.minWidth,
          minHeight: opts.minHeight,
          maxPixels: opts.maxPixels ?? DEFAULT_MAX_PIXELS,
        }),
      );
      next++;
    }
  };
  let consumed = 0;
  try {
  while (consumed < samples.length) {
    fill();
    const count = Math.min(opts.batchSize, samples.length - consumed);
    const results = await Promise.all(inFlight.splice(0, count));
    const batchSamples = samples.slice(consumed, consumed + count);
    consumed += count;
    fill(); // start the next decodes before the consumer runs the model on this batch
    const good: { data: Uint8Array; width: number; height: number }[] = [];
    const kept: Sample[] = [];
    results.forEach((r, i) => {
      if (r.ok) {
        good.push(r);
        kept.push(batchSamples[i]!);
      } else {
        opts.skips.record(batchSamples[i]!.relPath, r.reason);
      }
    });
    if (good.length > 0) yield pack(good, kept, consumed - count);
  }
  } finally {
    // Left early (break, error): the decodes still in flight are abandoned, and may fail
    // when the pool shuts down; that is expected, not an error to report.
    for (const p of inFlight) p.catch(() => {});
  }
}
