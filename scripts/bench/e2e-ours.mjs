// Our side of the end-to-end case of `npm run bench`: JPEG files through the sharp pool and
// the batcher into `trainStep` (which resizes and normalizes natively). Prints one JSON line
// with the median milliseconds per batch, the peak resident memory and the memory before the
// model (the baseline).
//   node scripts/bench/e2e-ours.mjs DIR PRESET BATCH ITERS   (POOL_THREADS: decoding workers, default all cores)
import { readdirSync } from 'node:fs';
import path from 'node:path';

import { root } from './common.mjs';

const { MotivNet, tuneProcess } = await import(path.join(root, 'dist/index.js'));
// As `motivnet train` runs (its process is its own): the process-wide settings of
// src/tune-process.ts, and CANDLE_NUM_THREADS=1 from compare.mjs's environment.
tuneProcess();
const { PreprocessPool, batches, SkipLog } = await import(path.join(root, 'dist/preprocess/index.js'));

const [dir, preset = 'tiny', batchArg = '8', itersArg = '10'] = process.argv.slice(2);
const batchSize = Number(batchArg);
const iters = Number(itersArg);
const files = readdirSync(dir).filter((f) => f.endsWith('.jpg')).sort().map((f) => path.join(dir, f));
// Resident memory with the libraries loaded, before the model and the pool.
const baselineRssMb = process.memoryUsage().rss / 2 ** 20;
const model = await MotivNet.load({ model: preset });
const pool = new PreprocessPool({ threads: Number(process.env.POOL_THREADS ?? 0) || undefined });
const { inputHeight, inputWidth } = model.config.encoder;
const samples = Array.from({ length: (iters + 1) * batchSize }, (_, i) => ({ path: files[i % files.length], relPath: '', label: i % 8 }));
const times = [];
let last = performance.now();
let n = 0;
for await (const b of batches(samples, { batchSize, prefetch: 2, decode: (t) => pool.decode(t), minWidth: inputWidth, minHeight: inputHeight, skips: new SkipLog() })) {
  await model.trainStep(b, b.labels, { encoderLr: 1e-5, decoderLr: 1e-4 });
  const now = performance.now();
  if (n++ > 0) times.push(now - last); // the first batch is the warm-up
  last = now;
}
await pool.destroy();
model.dispose();
times.sort((a, b) => a - b);
console.log(JSON.stringify({ ms: times[Math.floor(times.length / 2)], peakRssMb: process.resourceUsage().maxRSS / 1024, baselineRssMb }));
