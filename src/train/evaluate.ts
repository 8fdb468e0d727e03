/** A labelled set through the pool and the model in eval mode, to metrics. */
import type { Sample } from '../data/types.js';
import type { MotivNet } from '../model.js';
import { batches, DEFAULT_MAX_PIXELS } from '../preprocess/batcher.js';
import type { PreprocessPool } from '../preprocess/pool.js';
import type { SkipLog } from '../preprocess/skips.js';
import { computeMetrics, type Metrics } from './metrics.js';
import { Progress } from './progress.js';

export interface EvaluateOptions {
  batchSize: number;
  prefetch?: number;
  maxPixels?: number;
  /** Shrink large JPEGs while decoding (faster; not the reference's pixels). */
  fastDecode?: boolean;
  skips: SkipLog;
  /** Label of the progress bar; none when absent. */
  label?: string;
  progressStream?: NodeJS.WriteStream;
  /** Stops the evaluation between batches (it then throws [`EvaluationAborted`]). */
  signal?: AbortSignal;
}

/** An evaluation stopped by its signal before the end of its set. */
export class EvaluationAborted extends Error {
  constructor() {
    super('evaluation stopped before the end of its set');
    this.name = 'EvaluationAborted';
  }
}

export async function evaluateSet(model: MotivNet, pool: PreprocessPool, samples: Sample[], opts: EvaluateOptions): Promise<Metrics> {
  const classes = model.config.head.numClasses;
  const { inputHeight: minHeight, inputWidth: minWidth } = model.config.encoder;
  const probabilities: number[] = [];
  const labels: number[] = [];
  let lossSum = 0;
  const progress = opts.label ? new Progress({ label: opts.label, total: samples.length, stream: opts.progressStream }) : undefined;
  const batchSize = Math.max(opts.batchSize, 8);
  for await (const batch of batches(samples, { batchSize, prefetch: opts.prefetch, decode: (t) => pool.decode(t), minWidth, minHeight, maxPixels: opts.maxPixels ?? DEFAULT_MAX_PIXELS, fastDecode: opts.fastDecode, skips: opts.skips })) {
    if (opts.signal?.aborted) {
      progress?.finish();
      throw new EvaluationAborted();
    }
    const r = await model.evaluate(batch, batch.labels);
    lossSum += r.loss * batch.labels.length;
    probabilities.push(...r.probabilities);
    labels.push(...batch.labels);
    progress?.update(Math.min(samples.length, batch.offset + batchSize), labels.length, {});
  }
  progress?.finish();
  return computeMetrics(probabilities, labels, classes, labels.length ? lossSum / labels.length : Number.NaN);
}
