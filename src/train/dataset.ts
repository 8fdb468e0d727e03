/** From a run's data settings to the train, validation and test samples it uses. */
import path from 'node:path';

import { readAffectNet } from '../data/affectnet.js';
import { readFolders } from '../data/folders.js';
import { detectAffectNet, detectFormat, affectNetFiles, type LayoutName } from '../data/layout.js';
import { readLabelsJson } from '../data/labels-json.js';
import { balancedSample, splitTrainValidation, type SampleReport } from '../data/sample.js';
import type { ClassCount, ReadResult, Sample } from '../data/types.js';
import { MotivNet } from '../model.js';
import type { RunConfig, TrainConfig } from './config.js';

/** Where a run's labels and images came from: what the sample report names. */
export interface DataSource {
  format: RunConfig['format'];
  /** The layout found in the data folder, or `given` when every file was named explicitly. */
  layout: LayoutName | 'json' | 'given';
  /** The label file (or class-folder root) of the training sample, and of the test set. */
  labels: string;
  testLabels?: string;
  /** The folder image paths are relative to. */
  images: string;
}

export interface Dataset {
  train: Sample[];
  validation: Sample[];
  test?: Sample[];
  report: SampleReport;
  dropped: Record<string, number>;
  source: DataSource;
}

type DataSettings = Pick<TrainConfig, 'data' | 'labels' | 'testLabels' | 'testData' | 'images' | 'cropToFace'> & { format: RunConfig['format']; classes: ClassCount };

/** Which files a run's data settings point at: explicit files first, then the data folder's layout. */
export function dataSource(cfg: DataSettings): DataSource {
  switch (cfg.format) {
    case 'affectnet': {
      // Without a label file named, the data folder must hold an AffectNet layout.
      const found = cfg.labels === undefined ? affectNetFiles(cfg.data) : detectAffectNet(cfg.data);
      return {
        format: 'affectnet',
        layout: cfg.labels === undefined ? found!.layout : 'given',
        labels: cfg.labels ?? found!.training,
        testLabels: cfg.testLabels ?? found?.validation,
        images: cfg.images ?? found?.images ?? cfg.data,
      };
    }
    case 'json':
      if (cfg.labels === undefined) throw new Error('the json format needs --labels FILE (the reference\'s {"0": [...], ...} label file)');
      return { format: 'json', layout: 'json', labels: cfg.labels, testLabels: cfg.testLabels, images: cfg.images ?? cfg.data };
    case 'folders':
      return { format: 'folders', layout: 'folders', labels: cfg.data, testLabels: cfg.testData, images: cfg.data };
  }
}

/** Reads one labelled set of `source`: the training sample's, or the test set (undefined when there is none). */
export async function readSet(source: DataSource, which: 'train' | 'test', cfg: Pick<DataSettings, 'classes' | 'cropToFace'>): Promise<ReadResult | undefined> {
  const file = which === 'train' ? source.labels : source.testLabels;
  if (file === undefined) return undefined;
  const { classes } = cfg;
  switch (source.format) {
    case 'affectnet':
      return readAffectNet({ csv: file, imagesDir: source.images, classes, cropToFace: cfg.cropToFace });
    case 'json':
      return readLabelsJson({ file, imagesDir: source.images, classes });
    case 'folders':
      return readFolders({ dir: file, classes });
  }
}

/**
 * Settles what a config leaves open: the data format (from the data folder) and the label set
 * (the class count of the weights' head, read from the file's shapes; 8 without weights).
 */
export async function resolveRunConfig(cfg: TrainConfig): Promise<RunConfig> {
  const format = cfg.format ?? detectFormat(cfg.data);
  let classes = cfg.classes;
  if (classes === undefined) {
    const model = await MotivNet.resolveConfig({ model: cfg.model, weights: cfg.weights, encoderOnly: cfg.encoderOnly });
    const n = model.head.numClasses;
    if (n !== 7 && n !== 8) {
      throw new Error(`model ${cfg.model}${cfg.weights ? ` with ${cfg.weights}` : ''} has ${n} classes; the emotion label sets have 7 or 8: give --classes and load the weights encoder-only for a new head`);
    }
    classes = n;
  }
  return { ...cfg, format, classes };
}

export async function loadDataset(cfg: RunConfig): Promise<Dataset> {
  const source = dataSource(cfg);
  const read = (await readSet(source, 'train', cfg))!;
  let samples = read.samples;
  let report: SampleReport;
  if (cfg.balanced) {
    ({ samples, report } = balancedSample(read.samples, cfg.classes, { seed: cfg.seed, capPerClass: cfg.capPerClass }));
  } else {
    const counts = Array.from({ length: cfg.classes }, () => 0);
    for (const s of samples) counts[s.label]!++;
    report = { before: counts, after: counts };
  }
  const { train, validation } = splitTrainValidation(samples, cfg.classes, { seed: cfg.seed, validationFraction: cfg.validationFraction, stratified: cfg.stratifiedSplit });
  const test = await readSet(source, 'test', cfg);
  return { train, validation, test: test?.samples, report, dropped: read.dropped, source };
}

/** One line naming the layout and the files read, for the run's log. */
export function describeSource(source: DataSource): string {
  const rel = (p: string) => path.relative(process.cwd(), p) || '.';
  const what = source.format === 'folders' ? 'class folders' : 'labels';
  return `data: ${source.layout} layout; ${what} ${rel(source.labels)}${source.testLabels ? `, test ${rel(source.testLabels)}` : ', no test set'}; images in ${rel(source.images)}`;
}
