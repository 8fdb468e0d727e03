/**
 * Durable runs: one run per folder, stale temporary files cleared, Ctrl-C during validation
 * and the test handled as during training, and a run killed in the middle of a checkpoint
 * save that resumes.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';

import { resume, train, type TrainHooks } from '../src/train/trainer.js';
import { colourFolders, tinyModelConfig } from './helpers/dataset.js';
import { tempDir, writeText } from './helpers/files.js';
import { readSafetensors } from './helpers/safetensors.js';

const cli = path.resolve(__dirname, '../dist/cli.js');

let base: string;
let data: string;
let model: string;

beforeAll(async () => {
  base = tempDir('durable');
  data = await colourFolders(path.join(base, 'data'), 10, 1);
  model = tinyModelConfig(base);
}, 60_000);

const config = (out: string, extra: Record<string, unknown> = {}) => ({
  data,
  format: 'folders',
  model,
  epochs: 2,
  batchSize: 4,
  accumulate: 1,
  encoderLr: 2e-3,
  decoderLr: 2e-3,
  validationFraction: 0.5,
  seed: 5,
  threads: 1,
  out,
  ...extra,
});

/** Hooks that log into `lines` and abort once a progress label starting with `phase` is drawn. */
function abortingAt(phase: string, lines: string[]): TrainHooks & { aborted: () => boolean } {
  const controller = new AbortController();
  const stream = {
    isTTY: true,
    columns: 200,
    write(text: string) {
      if (text.replace(/^\r/, '').startsWith(phase)) controller.abort();
      return true;
    },
  } as unknown as NodeJS.WriteStream;
  return { signal: controller.signal, log: (l) => lines.push(l), progressStream: stream, aborted: () => controller.signal.aborted };
}

const quiet = { log: () => {}, progressStream: { isTTY: false, write: () => true } as unknown as NodeJS.WriteStream };

/** A process id that is no longer running. */
function deadPid(): number {
  const r = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' });
  return Number(r.stdout);
}

const temporaries = (dir: string) =>
  [dir, path.join(dir, 'checkpoints')].flatMap((d) => (existsSync(d) ? readdirSync(d).filter((n) => n.endsWith('.tmp')) : []));

describe('durable runs', () => {
  it('refuses a folder another live run holds, on start and on resume', async () => {
    const out = path.join(base, 'held');
    await train(config(out, { epochs: 1 }), quiet);
    expect(existsSync(path.join(out, 'run.lock'))).toBe(false); // given up when the run ended
    writeText(path.join(out, 'run.lock'), JSON.stringify({ pid: process.pid, host: hostname(), started: '2026-01-01T00:00:00Z' }));
    await expect(resume(out, quiet)).rejects.toThrow(new RegExp(`in use by another run \\(process ${process.pid}, started 2026-01-01T00:00:00Z\\)`));
    await expect(train(config(path.join(base, 'held')), quiet)).rejects.toThrow(/already holds a run/);
    const fresh = path.join(base, 'held-fresh');
    writeText(path.join(fresh, 'run.lock'), JSON.stringify({ pid: process.pid, host: hostname(), started: 'x' }));
    await expect(train(config(fresh), quiet)).rejects.toThrow(/in use by another run/);
    writeText(path.join(fresh, 'run.lock'), JSON.stringify({ pid: 1, host: 'elsewhere.example', started: 'x' }));
    await expect(train(config(fresh), quiet)).rejects.toThrow(/held by a run on another machine \(elsewhere\.example.*delete .*run\.lock/);
  }, 60_000);

  it("takes over a dead run's lock and clears the temporary files a killed save left", async () => {
    const out = path.join(base, 'stale');
    await train(config(out, { epochs: 1 }), quiet);
    const pid = deadPid();
    writeText(path.join(out, 'run.lock'), JSON.stringify({ pid, host: hostname(), started: 'x' }));
    writeFileSync(path.join(out, 'checkpoints', '.last.safetensors.tmp'), Buffer.alloc(4096));
    const lines: string[] = [];
    const r = await resume(out, { ...quiet, log: (l) => lines.push(l) });
    expect(r.status).toBe('completed');
    expect(lines.join('\n')).toMatch(new RegExp(`took over .*run\\.lock from process ${pid}, which is gone`));
    expect(lines.join('\n')).toMatch(/removed .*\.last\.safetensors\.tmp, left by an interrupted save/);
    expect(temporaries(out)).toEqual([]);
    expect(existsSync(path.join(out, 'run.lock'))).toBe(false);
  }, 60_000);

  it('Ctrl-C while validating saves, and the resumed run ends where an uninterrupted one does', async () => {
    const whole = path.join(base, 'whole');
    await train(config(whole), quiet);
    const out = path.join(base, 'val-stop');
    const lines: string[] = [];
    const hooks = abortingAt('validate 1', lines);
    const r = await train(config(out), hooks);
    expect(hooks.aborted()).toBe(true);
    expect(r.status).toBe('interrupted');
    expect(lines.join('\n')).toMatch(/interrupted while validating epoch 1: saved .*last\.safetensors; continue with --resume/);
    const resumed = await resume(out, quiet);
    expect(resumed.status).toBe('completed');
    const epochs = readFileSync(path.join(out, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l).epoch);
    expect(epochs).toEqual([0, 1]);
    const [a, b] = [readSafetensors(path.join(whole, 'checkpoints/last.safetensors')), readSafetensors(path.join(out, 'checkpoints/last.safetensors'))];
    for (const [name, t] of Object.entries(a)) {
      if (name.startsWith('pose_encoder.') || name.startsWith('decoder.')) expect(Buffer.compare(Buffer.from(t.data.buffer), Buffer.from(b[name]!.data.buffer)), name).toBe(0);
    }
  }, 120_000);

  it('Ctrl-C during the test keeps the finished training, and a resume runs the test', async () => {
    const out = path.join(base, 'test-stop');
    const testData = await colourFolders(path.join(base, 'testdata'), 3, 2);
    const lines: string[] = [];
    const hooks = abortingAt('test', lines);
    const r = await train(config(out, { epochs: 1, testData }), hooks);
    expect(r.status).toBe('interrupted');
    expect(lines.join('\n')).toMatch(/interrupted during the final evaluation: .*last\.safetensors holds the finished training/);
    expect(existsSync(path.join(out, 'summary.json'))).toBe(false);
    const resumed = await resume(out, quiet);
    expect(resumed.status).toBe('completed');
    expect(resumed.test?.accuracy).toBeGreaterThanOrEqual(0);
    expect(JSON.parse(readFileSync(path.join(out, 'summary.json'), 'utf8')).status).toBe('completed');
  }, 120_000);

  it('a run killed in the middle of a checkpoint save resumes from the checkpoint before it', async () => {
    // A model whose training state is about 230 MB, on tiny images: steps are quick, saves are not.
    const heavy = writeText(
      path.join(base, 'heavy.json'),
      JSON.stringify({
        encoder: { embedDim: 512, depth: 6, heads: 8, inputHeight: 64, inputWidth: 48 },
        head: { numClasses: 8, embedDim: 512, layers: 1, heads: 4, feedforward: 1024, dropout: 0.1 },
      }),
    );
    // The kill must land while the save's temporary file exists: a kill that lands just after
    // the rename interrupts nothing, so try again (a fresh run each time).
    let out = '';
    for (let attempt = 0; attempt < 4 && !out; attempt++) {
      const dir = path.join(base, `killed-${attempt}`);
      const args = ['train', '--data', data, '--format', 'folders', '--model', heavy, '--out', dir, '--epochs', '3', '--batch-size', '8', '--accumulate', '1', '--threads', '1'];
      const child = spawn(process.execPath, [cli, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
      const exited = new Promise((r) => child.on('exit', r));
      const last = path.join(dir, 'checkpoints', 'last.safetensors');
      const partial = path.join(dir, 'checkpoints', '.last.safetensors.tmp');
      // Watch for a save of `last` while an earlier one exists, and kill the run in its middle.
      await new Promise<void>((resolve) => {
        const watch = setInterval(() => {
          if (existsSync(last) && existsSync(partial)) {
            child.kill('SIGKILL');
            clearInterval(watch);
            resolve();
          }
        }, 1);
        child.on('exit', () => {
          clearInterval(watch);
          resolve();
        });
      });
      await exited;
      if (existsSync(partial)) out = dir;
    }
    expect(out, 'no kill landed inside a save in four runs').not.toBe('');
    expect(readSafetensors(path.join(out, 'checkpoints', 'last.safetensors'))).toBeTruthy(); // the one before, whole
    const r = spawnSync(process.execPath, [cli, 'train', '--resume', out], { encoding: 'utf8', timeout: 240_000 });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/removed .*\.last\.safetensors\.tmp, left by an interrupted save/);
    expect(r.stdout).toMatch(/took over .*run\.lock from process \d+, which is gone/);
    expect(JSON.parse(readFileSync(path.join(out, 'summary.json'), 'utf8')).status).toBe('completed');
    expect(temporaries(out)).toEqual([]);
  }, 300_000);
});
