import { spawn, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';

import { cpuBf16Available, MotivNet } from '../src/index.js';
import { resume, train, TrainingStopped } from '../src/train/trainer.js';
import { colourAffectNet, colourFolders, tinyModelConfig } from './helpers/dataset.js';
import { tempDir, writeText } from './helpers/files.js';
import { parseRecord } from './helpers/csv.js';
import { readSafetensors } from './helpers/safetensors.js';

const cli = path.resolve(__dirname, '../dist/cli.js');
let base: string;
let data: string;
let test: string;
let model: string;

beforeAll(async () => {
  base = tempDir('train');
  data = await colourFolders(path.join(base, 'data'), 10, 1);
  test = await colourFolders(path.join(base, 'test'), 3, 2);
  model = tinyModelConfig(base);
}, 60_000);

const config = (out: string, extra: Record<string, unknown> = {}) => ({
  data,
  format: 'folders',
  testData: test,
  model,
  epochs: 2,
  batchSize: 4,
  accumulate: 2,
  encoderLr: 2e-3,
  decoderLr: 2e-3,
  flip: 0.5,
  seed: 3,
  threads: 2,
  out,
  ...extra,
});
const quiet = { log: () => {}, progressStream: { write: () => true, isTTY: false } as unknown as NodeJS.WriteStream };

function weightsOf(file: string): Record<string, number[]> {
  const all = readSafetensors(file);
  return Object.fromEntries(
    Object.entries(all)
      .filter(([k]) => k.startsWith('pose_encoder.') || k.startsWith('decoder.'))
      .map(([k, v]) => [k, Array.from(v.data as Float32Array)]),
  );
}

describe('training runs', () => {
  it('writes every file of the run folder with sane values', async () => {
    const out = path.join(base, 'run-a');
    const result = await train(config(out), quiet);
    expect(result.status).toBe('completed');
    for (const f of ['config.json', 'metrics.jsonl', 'metrics.csv', 'summary.json', 'skipped.jsonl', 'curves.png', 'confusion.png', 'checkpoints/last.safetensors', 'checkpoints/best.safetensors']) {
      expect(existsSync(path.join(out, f)), f).toBe(true);
    }
    const rows = readFileSync(path.join(out, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    expect(rows.map((r) => r.epoch)).toEqual([0, 1]);
    // It learns: both losses fall from the first epoch to the second (about 1.9 -> 1.2 in training).
    expect(rows[1].trainLoss).toBeLessThan(0.8 * rows[0].trainLoss);
    expect(rows[1].validation.loss).toBeLessThan(rows[0].validation.loss);
    for (const r of rows) {
      expect(r.encoderLr).toBeGreaterThan(0);
      expect(r.imagesPerSecond).toBeGreaterThan(0);
    }
    expect(readFileSync(path.join(out, 'metrics.csv'), 'utf8').split('\n')[0]).toMatch(/^epoch,trainLoss,trainAccuracy,valLoss,valAccuracy,valAuroc/);
    const summary = JSON.parse(readFileSync(path.join(out, 'summary.json'), 'utf8'));
    expect(Object.keys(summary.test).sort()).toEqual(['accuracy', 'auroc', 'f1', 'loss', 'precision', 'recall']);
    // Chance is 1/8; after two epochs on colour-coded classes this run reaches 0.75.
    expect(summary.test.accuracy).toBeGreaterThanOrEqual(0.5);
    const confusion = summary.confusion as number[][];
    const total = confusion.flat().reduce((x, y) => x + y, 0);
    expect(total).toBe(24);
    expect(summary.test.accuracy).toBeCloseTo(confusion.reduce((t, row, i) => t + row[i]!, 0) / total, 12);
    expect([1, 2]).toContain(summary.bestEpoch);
    expect(summary.sample.after).toEqual(Array(8).fill(10));
    expect(statSync(path.join(out, 'curves.png')).size).toBeGreaterThan(1000);
    const png = readFileSync(path.join(out, 'confusion.png'));
    expect(png.subarray(1, 4).toString()).toBe('PNG');
    await expect(train(config(out), quiet)).rejects.toThrow(/already holds a run/);
  }, 120_000);

  it('an interrupted and resumed run ends with the same weights as an uninterrupted one', async () => {
    const straight = path.join(base, 'straight');
    const broken = path.join(base, 'broken');
    await train(config(straight), quiet);
    const first = await train(config(broken), { ...quiet, stopAfterMicroBatches: 7 }); // mid-cycle, mid-epoch 1
    expect(first.status).toBe('interrupted');
    const second = await resume(broken, quiet);
    expect(second.status).toBe('completed');
    const [a, b] = [weightsOf(path.join(straight, 'checkpoints/last.safetensors')), weightsOf(path.join(broken, 'checkpoints/last.safetensors'))];
    expect(Object.keys(a).length).toBeGreaterThan(10);
    for (const key of Object.keys(a)) expect(b[key], key).toEqual(a[key]);
    const metrics = (dir: string) => readFileSync(path.join(dir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => {
      const { seconds: _s, imagesPerSecond: _i, ...rest } = JSON.parse(l);
      return rest;
    });
    expect(metrics(broken)).toEqual(metrics(straight));
  }, 180_000);

  it('the upstream-code recipe: every image, a random split, the test set on the final weights', async () => {
    const out = path.join(base, 'recipe');
    const result = await train(config(out, { recipe: 'upstream-code', epochs: 2, batchSize: 4, metric: undefined }), quiet);
    expect(result.status).toBe('completed');
    const saved = JSON.parse(readFileSync(path.join(out, 'config.json'), 'utf8'));
    expect(saved).toMatchObject({ recipe: 'upstream-code', balanced: false, stratifiedSplit: false, validationFraction: 0.2, metric: 'loss', testWeights: 'final', accumulate: 2 });
    const summary = JSON.parse(readFileSync(path.join(out, 'summary.json'), 'utf8'));
    expect(summary.testWeights).toBe('final');
    expect(summary.sample.perClass).toBeUndefined();
    // The test metrics are those of the last epoch's weights, not a reloaded best.
    const m = await MotivNet.load({ model });
    await m.loadState(path.join(out, 'checkpoints/last.safetensors'));
    const { evaluateSet } = await import('../src/train/evaluate.js');
    const { PreprocessPool } = await import('../src/preprocess/pool.js');
    const { SkipLog } = await import('../src/preprocess/skips.js');
    const { readFolders } = await import('../src/data/folders.js');
    const pool = new PreprocessPool({ threads: 1 });
    const again = await evaluateSet(m, pool, readFolders({ dir: test, classes: 8 }).samples, { batchSize: 8, skips: new SkipLog() });
    await pool.destroy();
    m.dispose();
    expect(summary.test.loss).toBeCloseTo(again.loss, 5);
  }, 120_000);

  it('stops on a non-finite loss with a message naming the step, keeping the last good checkpoint', async () => {
    const out = path.join(base, 'nan');
    const run = train(config(out, { encoderLr: 1e30, decoderLr: 1e30, accumulate: 1 }), quiet);
    await expect(run).rejects.toThrow(TrainingStopped);
    await expect(run).rejects.toThrow(/training stopped at epoch 1, micro-batch \d+ of 18 \(optimizer step \d+\): loss is not finite .* last good checkpoint is .*last\.safetensors/);
    const m = await MotivNet.load({ model });
    const state = (await m.loadState(path.join(out, 'checkpoints/last.safetensors'))) as { epoch: number; position: number };
    expect(state).toMatchObject({ epoch: 0, position: 0 });
    m.dispose();
  }, 60_000);

  // On a CPU with AVX512_BF16, a run in bf16 trains (the encoder's products in bf16, on AMX tiles
  // where the CPU has them) and writes f32
  // checkpoints; elsewhere it is refused with the reason before any data is read.
  it(`precision bf16 on the CPU: ${cpuBf16Available() ? 'trains, with f32 checkpoints' : 'refused without AVX512_BF16'}`, async () => {
    const out = path.join(base, 'bf16');
    if (!cpuBf16Available()) {
      await expect(train(config(out, { precision: 'bf16', data: path.join(base, 'no-such-folder') }), quiet)).rejects.toThrow(/precision bf16 trains on a CUDA device or on a CPU with AVX512_BF16/);
      return;
    }
    const result = await train(config(out, { precision: 'bf16', epochs: 1 }), quiet);
    expect(result.status).toBe('completed');
    expect(Number.isFinite(result.test!.loss)).toBe(true);
    const weights = readSafetensors(path.join(out, 'checkpoints/last.safetensors'));
    expect(weights['pose_encoder.layers.0.attn.qkv.weight']!.dtype).toBe('F32');
  }, 60_000);
});

describe('the motivnet CLI', () => {
  const run = (...args: string[]) => spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', timeout: 60_000 });

  it('rejects bad flags and bad config files with readable errors', () => {
    let r = run('train', '--epochs', 'ten');
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/--epochs must be a number, got 'ten'/);
    r = run('train', '--format', 'csv');
    expect(r.stderr).toMatch(/argument 'csv' is invalid.*affectnet, json, folders/s);
    r = run('train', '--data', data, '--format', 'folders');
    expect(r.stderr).toMatch(/invalid training config[\s\S]*out: /);
    r = run('train', '--data', data, '--recipe', 'fastest');
    expect(r.stderr).toMatch(/argument 'fastest' is invalid.*paper, upstream-code/s);
    r = run('train', '--data', path.join(base, 'nothing-here'), '--out', path.join(base, 'none'));
    expect(r.stderr).toMatch(/nothing-here: the data folder does not exist/);
    const bad = writeText(path.join(base, 'bad.yaml'), 'data: x\nformat: folders\nout: y\nepochs: -3\nbatchsize: 2\n');
    r = run('train', '--config', bad);
    expect(r.stderr).toMatch(/bad\.yaml with the command-line flags: invalid training config/);
    expect(r.stderr).toMatch(/epochs: .*>0|epochs: Too small/);
    expect(r.stderr).toMatch(/Unrecognized key.*batchsize/);
    const broken = writeText(path.join(base, 'broken.json'), '{"data": ');
    expect(run('train', '--config', broken).stderr).toMatch(/broken\.json: not valid JSON/);
    expect(run('frobnicate').stderr).toMatch(/unknown command 'frobnicate'/);
  });

  it('evaluates, predicts and converts with trained weights', async () => {
    const out = path.join(base, 'run-cli');
    await train(config(out), quiet);
    const weights = path.join(out, 'checkpoints/best.safetensors');
    let r = run('eval', '--weights', weights, '--model', model, '--data', test, '--format', 'folders', '--json');
    expect(r.status, r.stderr).toBe(0);
    const metrics = JSON.parse(r.stdout);
    expect(metrics.images).toBe(24);
    expect(metrics.confusion).toHaveLength(8);
    // The run tested the same weights on the same images: the same numbers.
    const summary = JSON.parse(readFileSync(path.join(out, 'summary.json'), 'utf8'));
    expect(metrics.accuracy).toBe(summary.test.accuracy);
    expect(metrics.loss).toBeCloseTo(summary.test.loss, 5);
    expect(metrics.auroc).toBeCloseTo(summary.test.auroc, 9);
    r = run('eval', '--weights', weights, '--model', model, '--data', test, '--format', 'folders');
    expect(r.stdout).toMatch(/24 images, no files skipped\naccuracy +AUROC/);

    r = run('predict', '--weights', weights, '--model', model, '--input', path.join(test, 'happy'), path.join(test, 'missing.png'));
    const lines = r.stdout.trim().split('\n').map((l) => JSON.parse(l));
    expect(lines).toHaveLength(3);
    expect(lines[0].file).toBe(path.join(test, 'happy', '0.png'));
    expect(Object.keys(lines[0].probabilities)).toHaveLength(8);
    expect(lines[0].logits).toHaveLength(8);
    expect(r.stderr).toMatch(/skipped .*missing\.png: missing file/);
    expect(r.status).toBe(1);
    r = run('predict', '--weights', weights, '--model', model, '--input', path.join(test, 'sad', '1.png'), '--format', 'csv', '--resize', 'stretch');
    expect(r.stdout.split('\n')[0]).toBe('file,label,neutral,happy,sad,surprise,fear,disgust,anger,contempt');
    // A file name a spreadsheet would run as a formula, with a comma and quotes: one cell, as text.
    const csvDir = tempDir('motivnet-csv-');
    const hostile = '=HYPERLINK("x"),1.png';
    copyFileSync(path.join(test, 'sad', '1.png'), path.join(csvDir, hostile));
    const args = ['predict', '--weights', path.resolve(weights), '--model', path.resolve(model), '--input', hostile, '--format', 'csv'];
    r = spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', timeout: 60_000, cwd: csvDir });
    const record = parseRecord(r.stdout.split('\n')[1]!);
    expect(record).toHaveLength(10);
    expect(record[0]).toBe(`'${hostile}`);
    r = run('predict', '--weights', weights, '--model', model, '--input', path.join(test, 'sad', '1.png'), '--format', 'table', '--top-k', '2');
    expect(r.stdout.trim()).toMatch(/1\.png +\w+ \d+\.\d% +\w+ \d+\.\d%$/);
    r = run('predict', '--weights', weights, '--model', model, '--input', path.join(test, 'sad', '1.png'), '--precision', 'bf16');
    if (cpuBf16Available()) {
      expect(r.status).toBe(0);
      expect(JSON.parse(r.stdout.trim()).file).toBe(path.join(test, 'sad', '1.png'));
    } else {
      expect(r.status).not.toBe(0);
      expect(r.stderr).toMatch(/needs a CUDA device or a CPU with AVX512_BF16/);
    }

    const fixtures = path.resolve(__dirname, '../crates/motivnet/tests/fixtures');
    const converted = path.join(base, 'converted.safetensors');
    r = run('convert', '--input', path.join(fixtures, 'sapiens_backbone.pth'), '--output', converted);
    expect(r.stdout).toMatch(/wrote \d+ tensors to .*converted\.safetensors, \d+ renamed, 1 left out \(backbone\.cls_token\)/);
    expect(Object.keys(readSafetensors(converted))).toContain('pose_encoder.projection.weight');
    expect(run('convert', '--input', path.join(fixtures, 'torchscript.pt'), '--output', converted).stderr).toMatch(/TorchScript/);
  }, 120_000);

  it('fine-tunes a 7-class checkpoint in the released layout on AffectNet as unpacked, given --data alone', async () => {
    const fixtures = path.resolve(__dirname, '../crates/motivnet/tests/fixtures');
    const spec = path.join(fixtures, 'config_encoder_only.json');
    const released = path.join(fixtures, 'motivnet7.pth');
    const root = await colourAffectNet(path.join(base, 'AffectNet'), 6, 2);
    const out = path.join(base, 'finetune');
    let r = run('train', '--data', root, '--model', spec, '--weights', released, '--out', out, '--epochs', '1', '--batch-size', '4', '--accumulate', '1', '--threads', '1', '--encoder-lr', '1e-3', '--decoder-lr', '1e-3');
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/data: affectnet-unpacked layout; labels .*Manually_Annotated_file_lists\/training\.csv, test .*validation\.csv; images in .*Manually_Annotated_Images/);
    expect(r.stdout).toMatch(/dropped: 7 contempt \(7-class label set\): 6/);
    expect(JSON.parse(readFileSync(path.join(out, 'config.json'), 'utf8'))).toMatchObject({ format: 'affectnet', classes: 7 });
    expect(JSON.parse(readFileSync(path.join(out, 'model.json'), 'utf8')).head).toMatchObject({ numClasses: 7, feedforward: 48 });
    const summary = JSON.parse(readFileSync(path.join(out, 'summary.json'), 'utf8'));
    expect(summary.data.layout).toBe('affectnet-unpacked');
    expect(summary.confusion).toHaveLength(7);
    expect(summary.perClass.map((c: { class: string }) => c.class)).toEqual(['neutral', 'happy', 'sad', 'surprise', 'fear', 'disgust', 'anger']);

    r = run('eval', '--weights', released, '--model', spec, '--data', root, '--json');
    expect(r.status, r.stderr).toBe(0);
    const metrics = JSON.parse(r.stdout);
    expect(metrics.images).toBe(14); // 2 per class, contempt dropped
    expect(metrics.labels).toBe(path.join(root, 'Manually_Annotated_file_lists', 'validation.csv'));
    r = run('predict', '--weights', released, '--model', spec, '--input', path.join(root, 'Manually_Annotated_Images', '2'));
    expect(Object.keys(JSON.parse(r.stdout.split('\n')[0]!).probabilities)).toEqual(['neutral', 'happy', 'sad', 'surprise', 'fear', 'disgust', 'anger']);
    r = run('train', '--data', root, '--model', spec, '--weights', released, '--classes', '8', '--out', path.join(base, 'eight'));
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/holds a 7-class head .* 8 classes were asked for/);
  }, 120_000);

  it('a SIGINT mid-epoch saves a loadable last checkpoint and exits', async () => {
    const out = path.join(base, 'sigint');
    const big = await colourFolders(path.join(base, 'big'), 60, 4);
    const child = spawn(process.execPath, [cli, 'train', '--data', big, '--format', 'folders', '--model', model, '--out', out, '--epochs', '3', '--batch-size', '2', '--accumulate', '1', '--threads', '1'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (d) => (output += d));
    child.stderr.on('data', (d) => (output += d));
    await new Promise<void>((resolve) => {
      const check = setInterval(() => {
        if (/training, \d+ validation/.test(output)) {
          clearInterval(check);
          setTimeout(() => {
            child.kill('SIGINT');
            resolve();
          }, 300);
        }
      }, 20);
    });
    const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
    expect(output, output).toMatch(/SIGINT: saving the last checkpoint/);
    expect(output).toMatch(/interrupted at epoch \d, image \d+ of \d+: saved .*last\.safetensors; continue with --resume/);
    expect(code, output).toBe(130);
    const m = await MotivNet.load({ model });
    const state = (await m.loadState(path.join(out, 'checkpoints/last.safetensors'))) as { epoch: number; position: number };
    expect(state.position).toBeGreaterThan(0);
    m.dispose();
  }, 120_000);
});
