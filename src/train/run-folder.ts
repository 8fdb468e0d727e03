/**
 * The run folder: the resolved config, per-epoch metrics (JSONL and CSV), the summary, the
 * skipped files, the pictures and the checkpoints. Every file is written whole and durably
 * (a temporary name, flushed, renamed, the folder flushed), so neither an interrupted run nor a
 * power loss leaves half a file. One run at a time holds a folder (`run.lock`).
 */
import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { hostname } from 'node:os';
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

/** The temporary name a write of `file` goes through (the core's checkpoint saves use the same). */
const temporary = (file: string) => path.join(path.dirname(file), `.${path.basename(file)}.tmp`);

/** Writes `file` whole: to its temporary name, flushed to disk, renamed over it, the folder flushed. */
export function writeAtomic(file: string, text: string): void {
  const tmp = temporary(file);
  const fd = openSync(tmp, 'w');
  try {
    writeSync(fd, text);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, file);
  syncFolder(path.dirname(file));
}

/** Flushes a folder's entries (a rename into it) to disk, where the platform allows it. */
function syncFolder(dir: string): void {
  if (process.platform === 'win32') return;
  const fd = openSync(dir, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** What `run.lock` records of the run holding a folder. */
interface LockInfo {
  pid: number;
  host: string;
  started: string;
}

/** Whether a process with this id runs on this machine. */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    // EPERM: it exists, under another user.
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export class RunFolder {
  readonly checkpoints: string;
  private releaseOnExit: (() => void) | undefined;

  constructor(readonly dir: string) {
    this.checkpoints = path.join(dir, 'checkpoints');
    mkdirSync(this.checkpoints, { recursive: true });
  }

  get lockFile(): string {
    return path.join(this.dir, 'run.lock');
  }

  /**
   * Takes the folder for this process: refuses when another live process on this machine holds
   * it (two runs writing one folder would overwrite each other's checkpoints), takes over a
   * lock whose process is gone, then removes the temporary files a killed save left behind.
   * Returns what it did, for the log.
   */
  lock(): string[] {
    const notes: string[] = [];
    const mine: LockInfo = { pid: process.pid, host: hostname(), started: new Date().toISOString() };
    try {
      writeFileSync(this.lockFile, JSON.stringify(mine) + '\n', { flag: 'wx' });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      let held: LockInfo | undefined;
      try {
        held = JSON.parse(readFileSync(this.lockFile, 'utf8')) as LockInfo;
      } catch {
        held = undefined; // unreadable: a lock cut short by a crash
      }
      if (held && typeof held.pid === 'number') {
        if (held.host !== mine.host) {
          throw new Error(
            `${this.dir} is held by a run on another machine (${held.host}, process ${held.pid}, started ${held.started}): ` +
              `if that run is over, delete ${this.lockFile}; otherwise choose another --out`,
          );
        }
        if (alive(held.pid)) {
          throw new Error(`${this.dir} is in use by another run (process ${held.pid}, started ${held.started}): wait for it to end, or choose another --out`);
        }
        notes.push(`took over ${this.lockFile} from process ${held.pid}, which is gone`);
      } else {
        notes.push(`replaced an unreadable ${this.lockFile}`);
      }
      writeFileSync(this.lockFile, JSON.stringify(mine) + '\n');
    }
    this.releaseOnExit = () => this.unlock();
    process.once('exit', this.releaseOnExit);
    for (const dir of [this.dir, this.checkpoints]) {
      for (const name of readdirSync(dir).filter((n) => n.startsWith('.') && n.endsWith('.tmp'))) {
        rmSync(path.join(dir, name), { force: true });
        notes.push(`removed ${path.join(dir, name)}, left by an interrupted save`);
      }
    }
    return notes;
  }

  /** Gives the folder up, if this process still holds it. */
  unlock(): void {
    if (this.releaseOnExit) process.off('exit', this.releaseOnExit);
    this.releaseOnExit = undefined;
    try {
      const held = JSON.parse(readFileSync(this.lockFile, 'utf8')) as LockInfo;
      if (held.pid === process.pid && held.host === hostname()) rmSync(this.lockFile, { force: true });
    } catch {
      // Gone already, or not ours to remove.
    }
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
