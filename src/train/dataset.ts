/** From a run's data settings to the train, validation and test samples it uses. */
import path from 'node:path';

import { readAffectNet } from '../data/affectnet.js';
import { readFolders } from '../data/folders.js';
import { readLabelsJson } from '../data/labels-json.js';
import { balancedSample, splitTrainValidation, type SampleReport } from '../data/sample.js';
import type { ReadResult, Sample } from '../data/types.js';
import type { TrainConfig } from './config.js';

export interface Dataset {
  train: Sample[];
  validation: Sample[];
  test?: Sample[];
  report: SampleReport;
  dropped: Record<string, number>;
}

type DataSettings = Pick<TrainConfig, 'data' | 'format' | 'labels' | 'testLabels' | 'testData' | 'images' | 'classes' | 'cropToFace'>;

/** Reads one labelled set: `labels` for affectnet/json, `folder` for folders. */
export async function readSet(cfg: DataSettings, which: 'train' | 'test'): Promise<ReadResult | undefined> {
  const images = cfg.images ?? cfg.data;
  const classes = cfg.classes;
  switch (cfg.format) {
    case 'affectnet': {
      const csv = which === 'train' ? (cfg.labels ?? path.join(cfg.data, 'training.csv')) : (cfg.testLabels ?? path.join(cfg.data, 'validation.csv'));
      if (which === 'test' && cfg.testLabels === undefined && !(await exists(csv))) return undefined;
      return readAffectNet({ csv, imagesDir: images, classes, cropToFace: cfg.cropToFace });
    }
    case 'json': {
      const file = which === 'train' ? cfg.labels : cfg.testLabels;
      if (file === undefined) {
        if (which === 'test') return undefined;
        throw new Error('the json format needs --labels FILE (the reference\'s {"0": [...], ...} label file)');
      }
      return readLabelsJson({ file, imagesDir: images, classes });
    }
    case 'folders': {
      const dir = which === 'train' ? cfg.data : cfg.testData;
      return dir === undefined ? undefined : readFolders({ dir, classes });
    }
  }
}

async function exists(file: string): Promise<boolean> {
  const { access } = await import('node:fs/promises');
  return access(file).then(
    () => true,
    () => false,
  );
}

export async function loadDataset(cfg: TrainConfig): Promise<Dataset> {
  const read = (await readSet(cfg, 'train'))!;
  const { samples, report } = balancedSample(read.samples, cfg.classes, { seed: cfg.seed, capPerClass: cfg.capPerClass });
  const { train, validation } = splitTrainValidation(samples, cfg.classes, { seed: cfg.seed, validationFraction: cfg.validationFraction });
  const test = await readSet(cfg, 'test');
  return { train, validation, test: test?.samples, report, dropped: read.dropped };
}
