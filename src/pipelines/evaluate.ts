/**
 * Evaluating weights on a labelled set: the pipeline behind `motivnet eval`, for library users
 * too. The set is the data folder's test list (AffectNet's validation list, a JSON label file,
 * or class folders), every image of it, no sampling; the label set follows the model.
 */
import { detectFormat } from '../data/layout.js';
import type { ClassCount } from '../data/types.js';
import { MotivNet, type LoadOptions } from '../model.js';
import { PreprocessPool } from '../preprocess/pool.js';
import { SkipLog } from '../preprocess/skips.js';
import type { TrainConfig } from '../train/config.js';
import { dataSource, readSet } from '../train/dataset.js';
import { evaluateSet } from '../train/evaluate.js';
import type { Metrics } from '../train/metrics.js';

export interface EvaluateDataOptions {
  model: Pick<LoadOptions, 'model' | 'weights' | 'device' | 'precision'>;
  /** The data folder: AffectNet as unpacked, the flat layout, or class folders. */
  data: string;
  /** How labels are given; detected from `data` when absent. */
  format?: TrainConfig['format'];
  /** The label file (AffectNet CSV or JSON); by default the data folder's test list. */
  labels?: string;
  /** The folder the label file's paths are relative to; by default from the layout. */
  images?: string;
  /** The label set; by default the model's. */
  classes?: ClassCount;
  cropToFace?: boolean;
  batchSize?: number;
  fastDecode?: boolean;
}

export interface EvaluateDataResult extends Metrics {
  /** Images evaluated (skipped ones not counted). */
  images: number;
  /** The label file (or class-folder root) read. */
  labels: string;
  skipped: SkipLog;
}

export async function evaluateData(opts: EvaluateDataOptions): Promise<EvaluateDataResult> {
  const config = await MotivNet.resolveConfig({ ...opts.model, numClasses: opts.classes });
  const classes = config.head.numClasses;
  if (classes !== 7 && classes !== 8) throw new Error(`the model has ${classes} classes; evaluating needs the 7- or 8-class emotion label set`);
  const format = opts.format ?? detectFormat(opts.data);
  const cropToFace = Boolean(opts.cropToFace);
  // The labelled set is `labels`, or the data folder's test list.
  const settings = { data: opts.data, format, labels: opts.labels, testLabels: opts.labels, testData: opts.data, images: opts.images, classes: classes as ClassCount, cropToFace };
  const set = await readSet(dataSource(settings), 'test', settings);
  if (!set) throw new Error(`no labelled set found in ${opts.data}: give the label file`);
  const model = await MotivNet.load({ ...opts.model, numClasses: classes });
  const pool = new PreprocessPool();
  const skipped = new SkipLog();
  try {
    const m = await evaluateSet(model, pool, set.samples, { batchSize: opts.batchSize ?? 8, fastDecode: opts.fastDecode, skips: skipped });
    return { ...m, images: m.confusion.flat().reduce((a, b) => a + b, 0), labels: set.source, skipped };
  } finally {
    await pool.destroy();
    model.dispose();
  }
}
