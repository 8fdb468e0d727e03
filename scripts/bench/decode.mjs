// `npm run bench:decode`: what `fastDecode` (JPEG shrink-on-load) costs and gains against the
// exact path on large photographs. The set: 20 JPEGs of 2000-4000 px made from the
// photographs in test/fixtures/decode (crops and resizes at camera sizes, quality 90), cached
// under .cache/bench/large-photos. For each model, every photo goes through both decode paths
// and the same model call (letterbox, as the reference's inference): top-1 agreement and the
// largest logit difference. Speed: photos per second through the 2-worker pool, each path.
// Results go to docs/BENCHMARKS.md and docs/benchmarks/decode.json.
import { existsSync, mkdirSync, readdirSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import sharp from 'sharp';

import { machine, root, writeJson, writeSection } from './common.mjs';

const { MotivNet } = await import(path.join(root, 'dist/index.js'));
const { PreprocessPool } = await import(path.join(root, 'dist/preprocess/index.js'));

const SIZES = [
  [2000, 1500],
  [2048, 2048],
  [3000, 2000],
  [3264, 2448],
  [4000, 3000],
];
const dir = path.join(root, '.cache/bench/large-photos');

async function photos() {
  mkdirSync(dir, { recursive: true });
  const sources = ['astronaut-2048.jpg', 'chelsea-3000x2000.jpg', 'coffee-4000x2667.jpg', 'retina-1411.jpg'].map((f) => path.join(root, 'test/fixtures/decode', f));
  let i = 0;
  for (const [s, source] of sources.entries()) {
    const meta = await sharp(source).metadata();
    for (const [w, h] of SIZES) {
      const file = path.join(dir, `${String(i++).padStart(2, '0')}-${w}x${h}.jpg`);
      if (existsSync(file)) continue;
      // A crop of 70-100% of the photo at another aspect, then the camera size.
      const frac = 0.7 + 0.3 * ((i * 7 + s) % 10) / 10;
      const cw = Math.round(meta.width * frac);
      const ch = Math.min(meta.height, Math.round((cw * h) / w));
      const left = Math.floor((meta.width - cw) / 2);
      const top = Math.floor((meta.height - ch) / 2);
      await sharp(source).extract({ left, top, width: cw, height: ch }).resize(w, h, { fit: 'fill' }).jpeg({ quality: 90 }).toFile(file);
    }
  }
  return readdirSync(dir).filter((f) => f.endsWith('.jpg')).sort().map((f) => path.join(dir, f));
}

/** The newest demo run's trained weights, when `npm start` has been run here. */
function demoWeights() {
  const runs = path.join(root, 'runs');
  if (!existsSync(runs)) return undefined;
  const best = readdirSync(runs)
    .filter((d) => d.startsWith('demo-'))
    .sort()
    .reverse()
    .map((d) => path.join(runs, d, 'checkpoints/best.safetensors'))
    .find((f) => existsSync(f));
  return best;
}

const files = await photos();
const pool = new PreprocessPool({ threads: os.availableParallelism() });
const models = [{ name: 'tiny preset, 256 x 192, fresh upstream init (seed 0)', load: { model: 'tiny', seed: 0 } }];
const demo = demoWeights();
if (demo) models.push({ name: 'the demo model after `npm start`, 96 x 72, trained', load: { model: path.join(root, 'configs/demo-model.json'), weights: demo } });

const decodeTask = (file, model, fast) => ({ path: file, minWidth: model.config.encoder.inputWidth, minHeight: model.config.encoder.inputHeight, maxPixels: 64 << 20, fastDecode: fast });

const results = [];
for (const spec of models) {
  const model = await MotivNet.load(spec.load);
  let agree = 0;
  let worst = 0;
  let worstProbability = 0;
  for (const file of files) {
    const outputs = [];
    for (const fast of [false, true]) {
      const d = await pool.decode(decodeTask(file, model, fast));
      if (!d.ok) throw new Error(`${file}: ${d.reason}`);
      outputs.push(await model.predict({ data: d.data, width: d.width, height: d.height }, { geometry: 'letterbox' }));
    }
    const [exact, fast] = outputs;
    if (exact.top[0].index === fast.top[0].index) agree++;
    for (let c = 0; c < exact.numClasses; c++) {
      worst = Math.max(worst, Math.abs(exact.logits[c] - fast.logits[c]));
      worstProbability = Math.max(worstProbability, Math.abs(exact.probabilities[c] - fast.probabilities[c]));
    }
  }
  results.push({ model: spec.name, photos: files.length, top1Agreement: agree / files.length, maxLogitDiff: worst, maxProbabilityDiff: worstProbability });
  console.log(`${spec.name}: top-1 agreement ${agree}/${files.length}, largest logit difference ${worst.toExponential(2)}`);
  model.dispose();
}

// Speed: decode only (what fastDecode changes), through the pool, several passes.
async function throughput(fast) {
  const t = performance.now();
  const passes = 2;
  for (let p = 0; p < passes; p++) {
    await Promise.all(files.map((f) => pool.decode({ path: f, minWidth: 192, minHeight: 256, maxPixels: 64 << 20, fastDecode: fast })));
  }
  return (passes * files.length) / ((performance.now() - t) / 1000);
}
await throughput(false); // warm-up
const exactRate = await throughput(false);
const fastRate = await throughput(true);
await pool.destroy();

const date = new Date().toISOString().slice(0, 10);
const sizeMb = (files.reduce((n, f) => n + statSync(f).size, 0) / files.length / 2 ** 20).toFixed(1);
writeSection(
  'decode',
  `## Fast decode (shrink-on-load) against the exact path

\`npm run bench:decode\` — ${date}, ${machine()}.
${files.length} JPEG photographs of 2000 x 1500 to 4000 x 3000 px (quality 90, ${sizeMb} MB on average), made from the
photographs in test/fixtures/decode. Exact: the full image decoded, the core resizes it (the reference's pixels, within one
level). Fast: libvips shrinks any image at least twice the input size while decoding (JPEG shrink-on-load), never below
the input size. Logits of the same model call (letterbox) on both.

| model | top-1 agreement | largest logit difference | largest probability difference |
|---|---|---|---|
${results.map((r) => `| ${r.model} | ${r.photos * r.top1Agreement} / ${r.photos} | ${r.maxLogitDiff.toExponential(2)} | ${r.maxProbabilityDiff.toExponential(2)} |`).join('\n')}

Decoding (the part fast decode changes), ${os.availableParallelism()} pool workers: exact ${exactRate.toFixed(1)} photos/s,
fast ${fastRate.toFixed(1)} photos/s (${(fastRate / exactRate).toFixed(1)}x).
`,
);
writeJson('decode', { date, machine: machine(), photos: files.length, results, exactPhotosPerSecond: exactRate, fastPhotosPerSecond: fastRate });
console.log(`decode: exact ${exactRate.toFixed(1)} photos/s, fast ${fastRate.toFixed(1)} photos/s`);
