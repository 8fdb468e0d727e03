// `npm run bench:precision`: what inference in a lower precision costs in accuracy against f32,
// for each lower precision this CPU runs (bf16 on AMX tiles or AVX512_BF16, int8 on AVX512-VNNI):
// - on the fixtures: the test fixture model (crates/motivnet/tests/fixtures: config.json,
//   weights.safetensors) and the 7-class checkpoint in the released layout (motivnet7.pth), on
//   the fixture batch;
// - on the demo's test set: the demo's model trained by the demo's recipe (`npm start`, f32,
//   seed 0), its 320 test images as the test metrics see them (face crops).
// Per model and precision: top-1 agreement with f32, the largest logit and probability
// differences, and on the test set the accuracy in each precision. Results go to
// docs/BENCHMARKS.md and docs/benchmarks/precision.json.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { machine, root, writeJson, writeSection } from './common.mjs';
import { compare, demoData, demoTestSet, outputsOf } from './demo-test-set.mjs';

const { MotivNet, cpuBf16Available, cpuInt8Available } = await import(path.join(root, 'dist/index.js'));
const { train } = await import(path.join(root, 'dist/train/trainer.js'));
const { DEMO_TRAINING } = await import(path.join(root, 'dist/demo-recipe.js'));
const { PreprocessPool } = await import(path.join(root, 'dist/preprocess/index.js'));

const precisions = [...(cpuBf16Available() ? ['bf16'] : []), ...(cpuInt8Available() ? ['int8'] : [])];
if (precisions.length === 0) {
  console.log('this CPU runs neither bf16 (AVX512_BF16) nor int8 (AVX512-VNNI): nothing to measure');
  process.exit(0);
}

/** One F32 tensor of a safetensors file. */
function readF32(file, name) {
  const bytes = readFileSync(file);
  const headerLength = Number(bytes.readBigUInt64LE(0));
  const entry = JSON.parse(bytes.subarray(8, 8 + headerLength).toString('utf8'))[name];
  if (!entry || entry.dtype !== 'F32') throw new Error(`${file}: no F32 tensor '${name}'`);
  const [begin, end] = entry.data_offsets.map((o) => 8 + headerLength + o);
  return { data: new Float32Array(bytes.buffer.slice(bytes.byteOffset + begin, bytes.byteOffset + end)), shape: entry.shape };
}

const fixtures = path.join(root, 'crates/motivnet/tests/fixtures');
const batch = readF32(path.join(fixtures, 'batch.safetensors'), 'x');
const FIXTURE_MODELS = [
  { name: 'fixture model (config.json, weights.safetensors)', load: { model: path.join(fixtures, 'config.json'), weights: path.join(fixtures, 'weights.safetensors') } },
  { name: 'released layout, 7 classes (motivnet7.pth)', load: { model: path.join(fixtures, 'config_encoder_only.json'), weights: path.join(fixtures, 'motivnet7.pth') } },
];

/**
 * Two images of sapiens' 1024 x 768, as normalized tensors: smooth patterns of a few scales
 * with a little deterministic noise, so neighbouring patches differ as a photograph's do.
 */
function sapiensBatch() {
  const [h, w, images] = [1024, 768, 2];
  const data = new Float32Array(images * 3 * h * w);
  let seed = 12345;
  const noise = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648 - 0.5) * 0.2;
  for (let n = 0; n < images; n++)
    for (let c = 0; c < 3; c++)
      for (let y = 0; y < h; y++)
        for (let x = 0; x < w; x++) {
          const v = Math.sin(x * (0.011 + 0.004 * n) + c) + Math.cos(y * 0.017 - x * 0.003 * (c + 1)) + 0.5 * Math.sin((x + y) * 0.05);
          data[((n * 3 + c) * h + y) * w + x] = v + noise();
        }
  return { data, shape: [images, 3, h, w] };
}

/** A model's outputs on `input` (a tensor and its shape), one row per image. */
async function outputsOn(options, precision, input) {
  const model = await MotivNet.load({ ...options, precision });
  const out = await model.predict({ tensor: input.data, batchSize: input.shape[0] });
  model.dispose();
  const k = out.numClasses;
  return Array.from({ length: input.shape[0] }, (_, i) => ({ logits: out.logits.subarray(i * k, i * k + k), probabilities: out.probabilities.subarray(i * k, i * k + k) }));
}

// The fixture models run 12 tokens in one key block with heads of 16 values; sapiens-0.3b with
// random weights (seed 0) runs the presets' shapes: heads of 64 values, 3072 tokens in 24 key
// blocks. Its weights are untrained (its attention near uniform, its logits small), so it checks
// the kernels at those shapes, not a trained model's accuracy.
const MODELS = [
  ...FIXTURE_MODELS.map((m) => ({ ...m, set: 'the fixture batch', input: batch })),
  { name: 'sapiens-0.3b, random weights (seed 0)', load: { model: 'sapiens-0.3b', seed: 0 }, set: 'two patterned 1024 x 768 images', input: sapiensBatch() },
];

const results = [];
for (const m of MODELS) {
  const f32 = await outputsOn(m.load, 'f32', m.input);
  for (const precision of precisions) {
    const side = compare(f32, await outputsOn(m.load, precision, m.input));
    results.push({ model: m.name, set: m.set, precision, ...side });
  }
}

const data = await demoData();
const testSet = await demoTestSet(data);
const work = mkdtempSync(path.join(os.tmpdir(), 'motivnet-precision-'));
const pool = new PreprocessPool({ threads: 2 });
try {
  console.log(`training the demo's model (${DEMO_TRAINING.epochs} epochs, f32, seed 0)`);
  const out = path.join(work, 'demo');
  await train({ ...DEMO_TRAINING, data, out, seed: 0, threads: 2 }, { log: () => {}, progressStream: { write: () => true, isTTY: false } });
  const weights = path.join(out, 'checkpoints', 'best.safetensors');
  const f32 = await outputsOf(weights, testSet, pool);
  for (const precision of precisions) {
    const lower = await outputsOf(weights, testSet, pool, precision);
    results.push({ model: "the demo's model (npm start's recipe, f32, seed 0)", set: "the demo's test set (face crops)", precision, ...compare(f32, lower), f32Accuracy: f32.accuracy, accuracy: lower.accuracy });
  }
} finally {
  await pool.destroy();
  rmSync(work, { recursive: true, force: true });
}

const date = new Date().toISOString().slice(0, 10);
const pct = (v) => (v === undefined ? '-' : `${(100 * v).toFixed(2)}%`);
const sci = (v) => v.toExponential(2);
writeSection(
  'precision',
  `## Inference in bf16 and int8: what it costs in accuracy

\`npm run bench:precision\` — ${date}, ${machine()}. Each model predicts in f32 and in each lower precision this CPU
runs (${precisions.join(', ')}), from the same weights: bf16 rounds the Linear layers' and the attention's operands to bf16
(AMX tiles, or AVX512_BF16's dot products without them; f32 sums); int8 quantizes the encoder's Linear layers (each weight row to int8 with its own scale, each input
row to uint8 with its own scale and zero point, exact sums) and the encoder's attention products (q and k per row to
8 bits, v per channel to 9, the softmax's weights to 15 bits, exact sums; the softmax in f32); the norms and the head stay
f32. The fixture models run 12 tokens (heads of 16 values) and the demo's 24 (heads of 24), each in one key block of the
attention; sapiens-0.3b with random weights runs the presets' shapes (heads of 64 values, 3072 tokens in 24 key blocks),
untrained, so it checks the kernels there, not a trained model's accuracy. Top-1 agreement with f32 and the largest
differences over all the images and classes, beside the largest f32 logit; on the demo's test set, the accuracy in f32
and in the lower precision.

| model | images | precision | top-1 agreement with f32 | largest logit difference (largest logit) | largest probability difference | accuracy f32 / lower |
|---|---|---|---|---|---|---|
${results.map((r) => `| ${r.model} | ${r.set} | ${r.precision} | ${r.top1Agreement} / ${r.images} | ${sci(r.maxLogitDiff)} (${r.largestLogit.toFixed(2)}) | ${sci(r.maxProbabilityDiff)} | ${r.accuracy === undefined ? '-' : `${pct(r.f32Accuracy)} / ${pct(r.accuracy)}`} |`).join('\n')}
`,
);
writeJson('precision', { date, machine: machine(), results });
for (const r of results) console.log(`${r.model}, ${r.precision}: top-1 ${r.top1Agreement}, largest logit difference ${sci(r.maxLogitDiff)}`);
