import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

import { cpuBf16Available, cpuInt8Available, EMOTIONS_7, EMOTIONS_8, MotivNet, toInputTensor, type LoadOptions, type PackedImages } from '../src/index.js';
import { maxAbsDiff, readSafetensors } from './helpers/safetensors.js';

const fixtures = path.resolve(__dirname, '../crates/motivnet/tests/fixtures');
const fixtureModel = { model: path.join(fixtures, 'config.json'), weights: path.join(fixtures, 'weights.safetensors') };
const batch = readSafetensors(path.join(fixtures, 'batch.safetensors'));
const expected = readSafetensors(path.join(fixtures, 'expected.safetensors'));
const x = batch.x!.data as Float32Array;
const labels = Int32Array.from(batch.labels!.data as BigInt64Array, Number);
const perImage = 3 * 64 * 48;
const tmp = mkdtempSync(path.join(tmpdir(), 'motivnet-model-'));

/** Random RGB images of one size, packed back to back. */
function randomImages(count: number, width: number, height: number, seed = 1): PackedImages {
  const pixels = new Uint8Array(count * width * height * 3);
  let s = seed;
  for (let i = 0; i < pixels.length; i++) {
    s = (s * 1103515245 + 12345) >>> 0;
    pixels[i] = s >>> 24;
  }
  return { pixels, widths: Array(count).fill(width), heights: Array(count).fill(height) };
}

describe('MotivNet', () => {
  const models: MotivNet[] = [];
  afterAll(() => models.forEach((m) => m.dispose()));
  const load = async (opts: LoadOptions = fixtureModel) => {
    const m = await MotivNet.load(opts);
    models.push(m);
    return m;
  };

  it('reproduces the PyTorch reference logits on the fixture', async () => {
    const model = await load();
    expect(model.labels).toEqual(EMOTIONS_8);
    expect(model.config.encoder).toMatchObject({ embedDim: 32, inputHeight: 64, inputWidth: 48 });
    const out = await model.predict({ tensor: x, batchSize: 4 });
    expect(out.batchSize).toBe(4);
    expect(out.numClasses).toBe(8);
    expect(maxAbsDiff(out.logits, expected.logits_eval!.data as Float32Array)).toBeLessThan(1e-4);
    for (let b = 0; b < 4; b++) {
      const row = out.probabilities.subarray(b * 8, b * 8 + 8);
      expect(row.reduce((a, v) => a + v, 0)).toBeCloseTo(1, 5);
      expect(out.top[b]!.probability).toBe(Math.max(...row));
    }
    const counts = model.parameterCounts();
    expect(counts.total - counts.trainable).toBe(8 * 32); // the frozen queries
  });

  it('predicts on u8 images of mixed sizes as on their input tensor', async () => {
    const model = await load();
    const images = [
      { data: randomImages(1, 30, 40, 3).pixels, width: 30, height: 40 },
      { data: randomImages(1, 97, 61, 4).pixels, width: 97, height: 61 },
    ];
    const out = await model.predict(images);
    expect(out.batchSize).toBe(2);
    // The same images resized and normalized by the core, then given as a tensor: the same answer.
    const packed = { pixels: new Uint8Array([...images[0]!.data, ...images[1]!.data]), widths: [30, 97], heights: [40, 61] };
    const tensor = await toInputTensor(packed, { height: 64, width: 48, geometry: 'letterbox' });
    const viaTensor = await model.predict({ tensor, batchSize: 2 });
    expect(maxAbsDiff(out.logits, viaTensor.logits)).toBeLessThan(1e-6);
    expect(out.logits[0]).not.toBe(out.logits[8]); // two different images, two different answers
    expect(out.top.map((t) => t.label)).toEqual(viaTensor.top.map((t) => t.label));
    expect(out.top[1]!.label).toBe(EMOTIONS_8[out.top[1]!.index]);
  });

  it('lowers the loss over ten train steps', async () => {
    const model = await load();
    const losses: number[] = [];
    for (let i = 0; i < 10; i++) {
      const r = await model.trainStep({ tensor: x, batchSize: 4 }, labels, { encoderLr: 1e-3, decoderLr: 1e-3 });
      expect(r.stepped).toBe(true);
      expect(r.step).toBe(i + 1);
      losses.push(r.loss);
    }
    expect(losses[9]!).toBeLessThan(0.5 * losses[0]!);
    const evaluated = await model.evaluate({ tensor: x, batchSize: 4 }, labels);
    expect(evaluated.loss).toBeLessThan(losses[0]!);
  });

  it('accumulating four micro-batches equals one batch four times larger', async () => {
    const [big, small] = [await load(), await load()];
    const lr = { encoderLr: 1e-3, decoderLr: 2e-3 };
    await big.trainStep({ tensor: x, batchSize: 4 }, labels, lr);
    for (let i = 0; i < 4; i++) {
      const micro = { tensor: x.subarray(i * perImage, (i + 1) * perImage), batchSize: 1 };
      const r = await small.trainStep(micro, labels.subarray(i, i + 1), { ...lr, endOfCycle: i === 3 });
      expect(r.stepped).toBe(i === 3);
    }
    const [a, b] = [await big.predict({ tensor: x, batchSize: 4 }), await small.predict({ tensor: x, batchSize: 4 })];
    expect(maxAbsDiff(a.logits, b.logits)).toBeLessThan(1e-4);
    expect(maxAbsDiff(a.logits, expected.logits_eval!.data as Float32Array)).toBeGreaterThan(1e-3);
  });

  it('saves weights and training state that load back', async () => {
    const model = await load();
    await model.trainStep({ tensor: x, batchSize: 4 }, labels, { encoderLr: 1e-3, decoderLr: 1e-3 });
    const weights = path.join(tmp, 'w.safetensors');
    const state = path.join(tmp, 's.safetensors');
    await model.save(weights);
    await model.saveState(state);
    const again = await load({ ...fixtureModel, weights });
    const [a, b] = [await model.predict({ tensor: x, batchSize: 4 }), await again.predict({ tensor: x, batchSize: 4 })];
    expect(maxAbsDiff(a.logits, b.logits)).toBe(0);
    const resumed = await load();
    await resumed.loadState(state);
    const lr = { encoderLr: 1e-3, decoderLr: 1e-3 };
    const [r1, r2] = [await model.trainStep({ tensor: x, batchSize: 4 }, labels, lr), await resumed.trainStep({ tensor: x, batchSize: 4 }, labels, lr)];
    expect(r2.step).toBe(2);
    expect(r2.loss).toBe(r1.loss);
  });

  it('keeps the event loop responsive during a long predict', async () => {
    const model = await load({ model: 'tiny' });
    let count = 16;
    for (;;) {
      const images = randomImages(count, 192, 256);
      let worst = 0;
      let last = performance.now();
      const timer = setInterval(() => {
        const now = performance.now();
        worst = Math.max(worst, now - last - 10);
        last = now;
      }, 10);
      const start = performance.now();
      await model.predict(images, { geometry: 'none' });
      const took = performance.now() - start;
      clearInterval(timer);
      if (took < 300 && count < 1024) {
        count *= 2; // too fast to prove anything: make the work longer
        continue;
      }
      expect(took).toBeGreaterThanOrEqual(300);
      expect(worst).toBeLessThan(50);
      break;
    }
  });

  it('holds memory flat over 500 predicts', async () => {
    const model = await load();
    const images = randomImages(2, 60, 80);
    let after20 = 0;
    for (let i = 0; i < 500; i++) {
      await model.predict(images);
      if (i === 19) after20 = process.memoryUsage().rss;
    }
    const growth = (process.memoryUsage().rss - after20) / 2 ** 20;
    expect(growth).toBeLessThan(50);
  });

  it('holds memory flat over 300 train steps', async () => {
    // Gradients carry their op graph in candle: a sum or moment kept without detaching it
    // keeps every step's activations alive (this model would grow ~1 MB a step).
    const model = await load();
    const lr = { encoderLr: 1e-4, decoderLr: 1e-4 };
    let after20 = 0;
    for (let i = 0; i < 300; i++) {
      await model.trainStep({ tensor: x, batchSize: 4 }, labels, { ...lr, endOfCycle: i % 2 === 1 });
      if (i === 19) after20 = process.memoryUsage().rss;
    }
    expect((process.memoryUsage().rss - after20) / 2 ** 20).toBeLessThan(50);
  });

  it('loads beside a piscina pool and the process exits cleanly', () => {
    const child = spawnSync(process.execPath, [path.join(__dirname, 'fixtures', 'piscina-child.mjs')], {
      encoding: 'utf8',
      timeout: 60_000,
    });
    expect(child.stderr).toBe('');
    expect(child.status).toBe(0);
    expect(child.stdout).toMatch(/^ok 4 \w+/);
  });

  describe("the released checkpoint's layout", () => {
    // motivnet7.pth: a plain state dict of a 7-class upstream MotivNet at the fixture size,
    // saved by the PyTorch reference script as the released MotivNet.pth is.
    const released = path.join(fixtures, 'motivnet7.pth');
    const encoderOnlyConfig = path.join(fixtures, 'config_encoder_only.json');

    it('takes the head from the weights where the spec leaves it open: 7 classes, the 7-class labels, the reference logits', async () => {
      const config = await MotivNet.resolveConfig({ model: encoderOnlyConfig, weights: released });
      expect(config.head).toMatchObject({ numClasses: 7, embedDim: 32, layers: 2, feedforward: 48 });
      const model = await load({ model: encoderOnlyConfig, weights: released });
      expect(model.labels).toEqual(EMOTIONS_7);
      expect(model.labels).toEqual(['neutral', 'happy', 'sad', 'surprise', 'fear', 'disgust', 'anger']);
      const out = await model.predict({ tensor: x, batchSize: 4 });
      expect(out.numClasses).toBe(7);
      const want = readSafetensors(path.join(fixtures, 'motivnet7_expected.safetensors')).logits_eval!.data as Float32Array;
      expect(maxAbsDiff(out.logits, want)).toBeLessThan(1e-4);
    });

    it('a preset does the same with a checkpoint of its encoder', async () => {
      const seven = await load({ model: 'tiny', numClasses: 7 });
      expect(seven.config.head.numClasses).toBe(7);
      const file = path.join(tmp, 'tiny7.safetensors');
      await seven.save(file);
      const config = await MotivNet.resolveConfig({ model: 'tiny', weights: file });
      expect(config.head.numClasses).toBe(7);
      const loaded = await load({ model: 'tiny', weights: file });
      expect(loaded.labels).toEqual(EMOTIONS_7);
      const images = randomImages(2, 96, 128);
      const [a, b] = [await seven.predict(images), await loaded.predict(images)];
      expect(maxAbsDiff(a.logits, b.logits)).toBe(0);
      // Without weights a preset's head has 8 classes; encoder-only, the head is fresh too.
      expect((await MotivNet.resolveConfig({ model: 'tiny' })).head.numClasses).toBe(8);
      expect((await MotivNet.resolveConfig({ model: 'tiny', weights: file, encoderOnly: true, numClasses: 8 })).head.numClasses).toBe(8);
    });

    it('a config file that writes its head, or another class count, fails naming both shapes', async () => {
      // config.json fixes 8 classes and feedforward 64: the file's head contradicts it.
      await expect(MotivNet.load({ model: fixtureModel.model, weights: released })).rejects.toThrow(
        /motivnet7\.pth: the weights do not fit this model[\s\S]*decoder\.decoder\.duplicate_pooling_bias: file \[7\], model \[8\]/,
      );
      await expect(MotivNet.load({ model: encoderOnlyConfig, weights: released, numClasses: 8 })).rejects.toThrow(
        /motivnet7\.pth holds a 7-class head .* but 8 classes were asked for: to train a new 8-class head on its encoder, load it encoder-only/,
      );
      const fresh = await load({ model: encoderOnlyConfig, weights: released, encoderOnly: true, numClasses: 8 });
      expect(fresh.labels).toEqual(EMOTIONS_8);
    });

    it('names an unknown init scheme', async () => {
      const bad = { ...fixtureModel, init: 'xavier' } as unknown as Parameters<typeof MotivNet.load>[0];
      await expect(MotivNet.load(bad)).rejects.toThrow(/init 'xavier' is not valid: expected upstream or vit/);
    });
  });

  describe('wrong input', () => {
    it('names the pixel buffer length and sizes', async () => {
      const model = await load();
      const short = { pixels: new Uint8Array(100), widths: [10], heights: [10] };
      await expect(model.predict(short)).rejects.toThrow(/holds 100 bytes, expected 300/);
      await expect(model.predict({ pixels: new Uint8Array(0), widths: [0], heights: [4] })).rejects.toThrow(/image 0 is 0 x 4/);
      await expect(model.predict({ pixels: new Uint8Array(12), widths: [-2], heights: [2] })).rejects.toThrow(/image 0 is -2 x 2/);
      await expect(model.predict({ tensor: new Float32Array(10), batchSize: 1 })).rejects.toThrow(/holds 10 values, expected 1 x 3 x 64 x 48/);
    });

    it('names labels out of range', async () => {
      const model = await load();
      const lr = { encoderLr: 1e-3, decoderLr: 1e-3 };
      await expect(model.trainStep({ tensor: x, batchSize: 4 }, [0, 1, 8, 2], lr)).rejects.toThrow(/label 8 at index 2 is out of range: the model has 8 classes/);
      await expect(model.trainStep({ tensor: x, batchSize: 4 }, [0, -1, 3, 2], lr)).rejects.toThrow(/label -1 at index 1 is out of range/);
      await expect(model.evaluate({ tensor: x, batchSize: 4 }, [0, 1])).rejects.toThrow(/2 labels for a batch of 4/);
    });

    it('names an unknown preset and unreadable weights', async () => {
      await expect(MotivNet.load({ model: 'giant' })).rejects.toThrow(/unknown model preset 'giant'/);
      const missing = path.join(tmp, 'nope.safetensors');
      await expect(MotivNet.load({ ...fixtureModel, weights: missing })).rejects.toThrow(/nope\.safetensors/);
      const garbage = path.join(tmp, 'garbage.safetensors');
      writeFileSync(garbage, 'definitely not weights');
      await expect(MotivNet.load({ ...fixtureModel, weights: garbage })).rejects.toThrow(/garbage\.safetensors: neither a safetensors file/);
      await expect(MotivNet.load({ model: 'tiny', weights: fixtureModel.weights })).rejects.toThrow(/mis-shaped keys/);
    });

    it('names an unknown precision', async () => {
      const bad = { ...fixtureModel, precision: 'fp8' } as unknown as Parameters<typeof MotivNet.load>[0];
      await expect(MotivNet.load(bad)).rejects.toThrow(/precision 'fp8' is not valid: expected f32, bf16 or int8/);
      const model = await MotivNet.load({ ...fixtureModel, precision: 'f32' });
      model.dispose();
    });

    // On a CPU with AMX, bf16 runs the products on its tiles: the logits follow f32's to bf16's
    // precision; loaded for inference, training is refused with the reason, and loaded for
    // training it trains. Elsewhere bf16 is refused with the reason.
    it(`bf16 on the CPU: ${cpuBf16Available() ? 'runs' : 'refused without AVX512_BF16'}`, async () => {
      if (!cpuBf16Available()) {
        await expect(MotivNet.load({ ...fixtureModel, precision: 'bf16' })).rejects.toThrow(/needs a CUDA device or a CPU with AVX512_BF16/);
        return;
      }
      const [f32, bf16] = [await MotivNet.load(fixtureModel), await MotivNet.load({ ...fixtureModel, precision: 'bf16' })];
      const [a, b] = [await f32.predict({ tensor: x, batchSize: 4 }), await bf16.predict({ tensor: x, batchSize: 4 })];
      const scale = Math.max(1, ...Array.from(a.logits, Math.abs));
      expect(maxAbsDiff(a.logits, b.logits)).toBeLessThan(0.03 * scale);
      expect(maxAbsDiff(a.logits, b.logits)).toBeGreaterThan(0);
      const top = (l: Float32Array, i: number) => Array.from(l.subarray(i * 8, i * 8 + 8)).indexOf(Math.max(...l.subarray(i * 8, i * 8 + 8)));
      for (let i = 0; i < 4; i++) expect(top(b.logits, i)).toBe(top(a.logits, i));
      await expect(bf16.trainStep({ tensor: x, batchSize: 4 }, labels, { encoderLr: 1e-3, decoderLr: 1e-3 })).rejects.toThrow(
        /cannot train: .* only in bf16.*load it with precision 'f32', or for training/,
      );
      // Its Linear weights are held only in bf16, packed for the tiles: saving them would write
      // rounded weights, so it is refused and no file is left behind.
      const refused = path.join(tmp, 'bf16.safetensors');
      await expect(bf16.save(refused)).rejects.toThrow(/cannot save the weights: .* only in bf16.*load it with precision 'f32'/);
      expect(existsSync(refused)).toBe(false);
      f32.dispose();
      bf16.dispose();

      // Loaded for training, bf16 trains with the encoder's products on the tiles: the first
      // step's loss is f32's to bf16's precision (not the same value), the weights stay f32 and
      // save, and after a few steps the two models still predict alike.
      const [a32, a16] = [await MotivNet.load(fixtureModel), await MotivNet.load({ ...fixtureModel, precision: 'bf16', forTraining: true })];
      const step = (m: MotivNet) => m.trainStep({ tensor: x, batchSize: 4 }, labels, { encoderLr: 1e-3, decoderLr: 1e-3 });
      const [first32, first16] = [await step(a32), await step(a16)];
      expect(Math.abs(first16.loss - first32.loss)).toBeLessThan(0.02 * Math.max(1, first32.loss));
      expect(first16.loss).not.toBe(first32.loss);
      for (let i = 0; i < 4; i++) await Promise.all([step(a32), step(a16)]);
      const [p32, p16] = [await a32.predict({ tensor: x, batchSize: 4 }), await a16.predict({ tensor: x, batchSize: 4 })];
      expect(maxAbsDiff(p32.logits, p16.logits)).toBeLessThan(0.05 * Math.max(1, ...Array.from(p32.logits, Math.abs)));
      const saved = path.join(tmp, 'bf16-trained.safetensors');
      await a16.save(saved);
      expect(existsSync(saved)).toBe(true);
      a32.dispose();
      a16.dispose();
    });

    // On a CPU with AVX512-VNNI, int8 runs the encoder's Linear products on it: the logits
    // follow f32's closely with the same top-1 classes, the maps come along, and whatever needs
    // the f32 weights (training, saving) is refused with the reason; so is loading int8 for
    // training. Elsewhere int8 is refused with the reason.
    it(`int8 on the CPU: ${cpuInt8Available() ? 'runs' : 'refused without VNNI'}`, async () => {
      if (!cpuInt8Available()) {
        await expect(MotivNet.load({ ...fixtureModel, precision: 'int8' })).rejects.toThrow(/needs a CPU with AVX512-VNNI|MOTIVNET_INT8=off/);
        return;
      }
      await expect(MotivNet.load({ ...fixtureModel, precision: 'int8', forTraining: true })).rejects.toThrow(
        /precision 'int8' is for inference only.*train with precision 'f32'/,
      );
      const [f32, int8] = [await MotivNet.load(fixtureModel), await MotivNet.load({ ...fixtureModel, precision: 'int8' })];
      const [a, b] = [await f32.predict({ tensor: x, batchSize: 4 }), await int8.predict({ tensor: x, batchSize: 4 })];
      const scale = Math.max(1, ...Array.from(a.logits, Math.abs));
      expect(maxAbsDiff(a.logits, b.logits)).toBeLessThan(0.01 * scale);
      expect(maxAbsDiff(a.logits, b.logits)).toBeGreaterThan(0);
      const top = (l: Float32Array, i: number) => Array.from(l.subarray(i * 8, i * 8 + 8)).indexOf(Math.max(...l.subarray(i * 8, i * 8 + 8)));
      for (let i = 0; i < 4; i++) expect(top(b.logits, i)).toBe(top(a.logits, i));
      const explained = await int8.predict({ tensor: x, batchSize: 4 }, { explain: true });
      expect(maxAbsDiff(explained.logits, b.logits)).toBe(0);
      await expect(int8.trainStep({ tensor: x, batchSize: 4 }, labels, { encoderLr: 1e-3, decoderLr: 1e-3 })).rejects.toThrow(
        /precision 'int8' is for inference only/,
      );
      const refused = path.join(tmp, 'int8.safetensors');
      await expect(int8.save(refused)).rejects.toThrow(/cannot save the weights: .* only in int8.*load it with precision 'f32' to save/);
      expect(existsSync(refused)).toBe(false);
      f32.dispose();
      int8.dispose();
    });

    it('refuses use after dispose', async () => {
      const model = await MotivNet.load(fixtureModel);
      model.dispose();
      expect(model.disposed).toBe(true);
      await expect(model.predict({ tensor: x, batchSize: 4 })).rejects.toThrow(/disposed/);
      await expect(model.save(path.join(tmp, 'x.safetensors'))).rejects.toThrow(/disposed/);
    });
  });
});
