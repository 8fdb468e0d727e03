// `npm run bench:preprocess`: images per second from JPEG files to normalized 1024 x 768
// input tensors. Ours: the piscina pool of sharp workers decodes, the core resizes and
// normalizes. The reference: OpenCV imread + resize + normalize in one process. Same files,
// run one after the other; results go to docs/BENCHMARKS.md and docs/benchmarks/preprocess.json.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';


import { machine, python, referenceMissing, root, writeJson, writeSection } from './common.mjs';
import { benchJpegs, jpegDir as dir } from './jpegs.mjs';

const { toInputTensor } = await import(path.join(root, 'dist/index.js'));
const { PreprocessPool, batches, SkipLog } = await import(path.join(root, 'dist/preprocess/index.js'));

const COUNT = Number(process.env.BENCH_IMAGES ?? 240);
const HEIGHT = 1024;
const WIDTH = 768;
const BATCH = 8;

async function ours(files) {
  const threads = os.availableParallelism();
  const pool = new PreprocessPool({ threads });
  const samples = files.map((f, i) => ({ path: f, relPath: path.basename(f), label: i % 8 }));
  // One reused output buffer, as a training loop keeps its input tensor.
  const buffer = new Float32Array(BATCH * 3 * HEIGHT * WIDTH);
  const run = async (list) => {
    const skips = new SkipLog();
    let images = 0;
    for await (const b of batches(list, { batchSize: BATCH, prefetch: 2, decode: (t) => pool.decode(t), minWidth: WIDTH, minHeight: HEIGHT, skips })) {
      const out = b.widths.length === BATCH ? buffer : undefined;
      const t = await toInputTensor(b, { height: HEIGHT, width: WIDTH, geometry: 'stretch', out });
      if (t.length !== b.widths.length * 3 * HEIGHT * WIDTH) throw new Error('wrong tensor size');
      images += b.widths.length;
    }
    if (skips.count) throw new Error(skips.summary());
    return images;
  };
  await run(samples.slice(0, 16));
  const start = performance.now();
  const images = await run(samples);
  const seconds = (performance.now() - start) / 1000;
  await pool.destroy();
  return { images, seconds, imagesPerSecond: images / seconds, threads };
}

function reference() {
  if (!existsSync(python)) return { error: referenceMissing() };
  const r = spawnSync(python, [path.join(root, 'scripts/reference/bench_loader.py'), dir, '--height', String(HEIGHT), '--width', String(WIDTH)], { encoding: 'utf8' });
  if (r.status !== 0) return { error: `reference loader failed: ${r.stderr.trim().split('\n').pop()}` };
  return JSON.parse(r.stdout.trim().split('\n').pop());
}

const files = await benchJpegs(COUNT);
console.log(`${files.length} JPEGs in ${path.relative(root, dir)}; decoding to ${HEIGHT} x ${WIDTH} float tensors`);
const a = await ours(files);
console.log(`ours:      ${a.imagesPerSecond.toFixed(1)} images/s (pool of ${a.threads} sharp workers + native resize/normalize)`);
const b = reference();
if (b.error) console.log(`reference: ${b.error}`);
else console.log(`reference: ${b.imagesPerSecond.toFixed(1)} images/s (OpenCV ${b.opencv}, ${b.opencvThreads} threads, one process)`);
const ratio = b.error ? null : a.imagesPerSecond / b.imagesPerSecond;
if (ratio !== null) console.log(`ours / reference throughput: ${ratio.toFixed(2)}x (target 1.5x)`);

const date = new Date().toISOString().slice(0, 10);
writeJson('preprocess', { date, machine: machine(), images: files.length, height: HEIGHT, width: WIDTH, batch: BATCH, ours: a, reference: b, ratio });
writeSection(
  'preprocess',
  `## Preprocessing: JPEG files to normalized ${HEIGHT} x ${WIDTH} tensors

\`npm run bench:preprocess\` — ${date}, ${machine()}.
${files.length} synthetic JPEGs of 360-440 x 400-480 px (quality 90), batch ${BATCH}, after a 16-image warm-up.

| pipeline | images/s |
|---|---|
| ours: ${a.threads} sharp workers (piscina) decode, the core resizes + normalizes | ${a.imagesPerSecond.toFixed(1)} |
| reference: OpenCV \`imread\` + \`resize\` + normalize, one process | ${b.error ? 'not measured: ' + b.error : b.imagesPerSecond.toFixed(1)} |
| ratio ours / reference (target 1.5x or better) | ${ratio === null ? 'n/a' : ratio.toFixed(2) + 'x'} |`,
);
