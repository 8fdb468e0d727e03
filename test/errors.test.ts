/**
 * Failures as a caller sees them: a MotivNetError with a stable code and a JavaScript stack,
 * through the library and the CLI; crafted inputs that used to crash the process (a panic in
 * the native core) now reject, and the process lives.
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

import { MotivNet, MotivNetError, type LoadOptions } from '../src/index.js';
import { readMetadata, readSafetensors, writeSafetensors } from './helpers/safetensors.js';
import { colourFolders } from './helpers/dataset.js';
import { tempDir } from './helpers/files.js';

const fixtures = path.resolve(__dirname, '../crates/motivnet/tests/fixtures');
const cli = path.resolve(__dirname, '../dist/cli.js');
const fixtureModel: LoadOptions = { model: path.join(fixtures, 'config.json'), weights: path.join(fixtures, 'weights.safetensors') };
const malformed = path.join(fixtures, 'short_rebuild_tuple.pth');
const tmp = tempDir('errors');
const batch = readSafetensors(path.join(fixtures, 'batch.safetensors'));
const x = batch.x!.data as Float32Array;
const labels = Int32Array.from(batch.labels!.data as BigInt64Array, Number);
const models: MotivNet[] = [];
afterAll(() => models.forEach((m) => m.dispose()));

async function rejection(p: Promise<unknown>): Promise<MotivNetError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(MotivNetError);
  return err as MotivNetError;
}

const run = (...args: string[]) => spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', timeout: 60_000 });

describe('MotivNetError', () => {
  it('carries a code per kind and a JavaScript stack', async () => {
    const cases: [() => Promise<unknown>, string, RegExp][] = [
      [() => MotivNet.load({ model: 'giant' }), 'MOTIVNET_CONFIG', /unknown model preset 'giant'/],
      [() => MotivNet.load({ ...fixtureModel, weights: path.join(tmp, 'nope.safetensors') }), 'MOTIVNET_IO', /nope\.safetensors/],
      [() => MotivNet.load({ model: 'tiny', weights: fixtureModel.weights }), 'MOTIVNET_WEIGHTS', /mis-shaped keys/],
      [() => MotivNet.load({ ...fixtureModel, device: 'cuda:one' }), 'MOTIVNET_DEVICE', /device 'cuda:one' is not valid/],
      [() => MotivNet.load({ ...fixtureModel, device: 'tpu' }), 'MOTIVNET_DEVICE', /device 'tpu' is not valid/],
    ];
    for (const [call, code, message] of cases) {
      const err = await rejection(call());
      expect(err.code).toBe(code);
      expect(err.message).toMatch(message);
      expect(err.message).not.toMatch(/^\[MOTIVNET/);
    }
    // The stack runs through the caller's own frames, as for any awaited JavaScript error.
    const loadGiant = async function loadFromTheCaller() {
      try {
        await MotivNet.load({ model: 'giant' });
      } catch (e) {
        return e as Error;
      }
    };
    expect((await loadGiant())!.stack).toMatch(/loadFromTheCaller/);
    const model = await MotivNet.load(fixtureModel);
    models.push(model);
    const short = await rejection(model.predict({ pixels: new Uint8Array(10), widths: [2], heights: [2] }));
    expect(short.code).toBe('MOTIVNET_INPUT');
    const lr = await rejection(model.trainStep({ tensor: x, batchSize: 4 }, labels, { encoderLr: -1, decoderLr: 1e-3 }));
    expect([lr.code, lr.message]).toEqual(['MOTIVNET_INPUT', expect.stringMatching(/encoder learning rate must be a finite number >= 0, got -1/)]);
    const nan = await rejection(model.trainStep({ tensor: new Float32Array(x.length).fill(Number.NaN), batchSize: 4 }, labels, { encoderLr: 1e-3, decoderLr: 1e-3 }));
    expect(nan.code).toBe('MOTIVNET_NON_FINITE');
    const gone = await MotivNet.load(fixtureModel);
    gone.dispose();
    expect((await rejection(gone.predict({ tensor: x, batchSize: 4 }))).code).toBe('MOTIVNET_DISPOSED');
  });
});

describe('crafted inputs that crashed the process', () => {
  it('a .pth whose tensor rebuild tuple is two items long: a weights error, through the library and the CLI', async () => {
    for (const call of [() => MotivNet.load({ ...fixtureModel, weights: malformed }), () => MotivNet.resolveConfig({ model: 'tiny', weights: malformed })]) {
      const err = await rejection(call());
      expect(err.code).toBe('MOTIVNET_WEIGHTS');
      expect(err.message).toMatch(/short_rebuild_tuple\.pth: a malformed weights file/);
    }
    const r = run('predict', '--weights', malformed, '--model', fixtureModel.model, '--input', path.join(fixtures, '..', '..', '..', '..', 'test', 'fixtures', 'decode', 'grey.jpg'));
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/motivnet: .*short_rebuild_tuple\.pth: a malformed weights file/);
    expect(run('convert', '--input', malformed, '--output', path.join(tmp, 'x.safetensors')).status).toBe(1);
  });

  it('a training state with an empty tensor: a state error naming file and key, the model untouched, through the library and the CLI', async () => {
    const model = await MotivNet.load(fixtureModel);
    models.push(model);
    const good = path.join(tmp, 'state.safetensors');
    await model.saveState(good, { note: 'x' });
    const tensors = readSafetensors(good);
    tensors['trainer.accumulated_micro_batches'] = { dtype: 'I64', shape: [0], data: new BigInt64Array(0) };
    const bad = path.join(tmp, 'empty.safetensors');
    writeSafetensors(bad, tensors, readMetadata(good));
    const before = await model.predict({ tensor: x, batchSize: 4 });
    const err = await rejection(model.loadState(bad));
    expect(err.code).toBe('MOTIVNET_STATE');
    expect(err.message).toMatch(/empty\.safetensors: trainer\.accumulated_micro_batches must hold one count/);
    const after = await model.predict({ tensor: x, batchSize: 4 });
    expect(Array.from(after.logits)).toEqual(Array.from(before.logits));
    // A run whose last checkpoint is so damaged: --resume says what is wrong and exits 1.
    const runDir = path.join(tmp, 'run');
    mkdirSync(path.join(runDir, 'checkpoints'), { recursive: true });
    const { writeFileSync } = await import('node:fs');
    const data = await colourFolders(path.join(tmp, 'data'), 2);
    writeFileSync(path.join(runDir, 'config.json'), JSON.stringify({ data, format: 'folders', classes: 8, model: fixtureModel.model, out: runDir }));
    writeSafetensors(path.join(runDir, 'checkpoints', 'last.safetensors'), tensors, readMetadata(good));
    const r = run('train', '--resume', runDir);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/last\.safetensors: trainer\.accumulated_micro_batches must hold one count/);
  });

  it('an image size whose byte count overflows: an input error', async () => {
    const model = await MotivNet.load(fixtureModel);
    models.push(model);
    const err = await rejection(model.predict({ pixels: new Uint8Array(12), widths: [2 ** 32], heights: [2 ** 32] }));
    expect(err.code).toBe('MOTIVNET_INPUT');
    expect(err.message).toMatch(/too many pixels to address/);
  });

  it('a panic inside a native call rejects with MOTIVNET_INTERNAL; the process lives and the torn model refuses calls', async () => {
    const model = await MotivNet.load(fixtureModel);
    models.push(model);
    const inner = (model as unknown as { inner: { panicForTest(): Promise<void> } }).inner;
    const { nativeCall } = await import('../src/errors.js');
    const err = await rejection(nativeCall(() => inner.panicForTest()));
    expect(err.code).toBe('MOTIVNET_INTERNAL');
    expect(err.message).toMatch(/the native core failed: a panic raised on purpose/);
    const refused = await rejection(model.predict({ tensor: x, batchSize: 4 }));
    expect(refused.code).toBe('MOTIVNET_INTERNAL');
    expect(refused.message).toMatch(/may be half-updated.*load it again/);
    // Other models, and the process, carry on.
    const other = await MotivNet.load(fixtureModel);
    models.push(other);
    expect((await other.predict({ tensor: x, batchSize: 4 })).batchSize).toBe(4);
  });
});
