/**
 * The run folder: the resolved config, per-epoch metrics (JSONL and CSV), the summary, the
 * skipped files, the pictures and the checkpoints. Every file is written whole through a
 * temporary name and a rename, so an interrupted run never leaves half a file.
 */
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import path from 'node:path';

import type { Metrics } from './metrics.js';

export interface EpochRecord {
  epoch: number;
  trainLoss: number;
  trainAccuracy: number;
  validation: Omit<Metrics, 'perClass' | 'confusion'>;
  encoderLr: number;
  decoderLr: number;
  imagesPerSecond: number;
  seconds: number;
  skipped: number;
}

export function writeAtomic(file: string, text: string): void {
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.tmp`);
  writeFileSync(tmp, text);
  renameSync(tmp, file);
}

export class RunFolder {
  readonly checkpoints: string;

  constructor(readonly dir: string) {
    this.checkpoints = path.join(dir, 'checkpoints');
    mkdirSync(this.checkpoints, { recursive: true });
  }

  file(name: string): string {
    return path.join(this.dir, name);
  }

  get last(): string {
    return path.join(this.checkpoints, 'last.safetensors');
  }

  get best(): string {
    return path.join(this.checkpoints, 'best.safetensors');
  }

  writeJson(name: string, value: unknown): void {
    writeAtomic(this.file(name), JSON.stringify(value, null, 2) + '\n');
  }

  readJson<T>(name: string): T {
    return JSON.parse(readFileSync(this.file(name), 'utf8')) as T;
  }

  /** The epochs recorded so far (before `before`, when resuming there). */
  epochs(before = Infinity): EpochRecord[] {
    const file = this.file('metrics.jsonl');
    if (!existsSync(file)) return [];
    return readFileSync(file, 'utf8')
      .split('\n')
      .filter((l) => l.trim())
      .map((l) => JSON.parse(l) as EpochRecord)
      .filter((r) => r.epoch < before);
  }

  /** Rewrites metrics.jsonl and metrics.csv from all records. */
  writeEpochs(records: EpochRecord[]): void {
    writeAtomic(this.file('metrics.jsonl'), records.map((r) => JSON.stringify(r)).join('\n') + (records.length ? '\n' : ''));
    const cols = ['epoch', 'trainLoss', 'trainAccuracy', 'valLoss', 'valAccuracy', 'valAuroc', 'valF1', 'valPrecision', 'valRecall', 'encoderLr', 'decoderLr', 'imagesPerSecond', 'seconds', 'skipped'];
    const rows = records.map((r) =>
      [r.epoch, r.trainLoss, r.trainAccuracy, r.validation.loss, r.validation.accuracy, r.validation.auroc, r.validation.f1, r.validation.precision, r.validation.recall, r.encoderLr, r.decoderLr, r.imagesPerSecond, r.seconds, r.skipped].join(','),
    );
    writeAtomic(this.file('metrics.csv'), [cols.join(','), ...rows].join('\n') + '\n');
  }
}
