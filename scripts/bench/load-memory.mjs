// `npm run bench:load`: the memory of loading sapiens-0.3b from a weights file in a Node
// process, as a backend serving it would. Writes the model's weights once (random upstream
// init, 1.27 GB of safetensors) under .cache/bench/weights, and the same state dict as a
// `torch.save` file where the PyTorch reference is installed (the form released checkpoints
// come in); then, in a fresh process for each file and precision (bf16 and int8 where this CPU
// runs them),
// loads them with MotivNet.load, predicts one image and reports the process's resident memory
// before the load, after it, after the prediction, and its peak. Records the figures in
// docs/BENCHMARKS.md and docs/benchmarks/load-memory.json.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import path from 'node:path';

import { machine, python, root, writeJson, writeSection } from './common.mjs';

const MODEL = 'sapiens-0.3b';
const library = path.join(root, 'dist/index.js');

/** Resident and peak resident memory of this process, in MB, from /proc. */
function memory() {
  const status = readFileSync('/proc/self/status', 'utf8');
  const kb = (field) => Number(status.match(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm'))[1]);
  return { rss: kb('VmRSS') / 1024, peak: kb('VmHWM') / 1024 };
}

if (process.argv[2] === '--write') {
  const { MotivNet } = await import(library);
  const model = await MotivNet.load({ model: MODEL });
  await model.save(process.argv[3]);
  model.dispose();
  process.exit(0);
}

if (process.argv[2] === '--load') {
  const [file, precision] = process.argv.slice(3);
  const { MotivNet } = await import(library);
  const before = memory();
  const started = performance.now();
  const model = await MotivNet.load({ model: MODEL, weights: file, precision });
  const loadMs = performance.now() - started;
  const loaded = memory();
  const image = new Float32Array(3 * 1024 * 768).map((_, i) => Math.sin(i * 0.01));
  await model.predict({ tensor: image, batchSize: 1 });
  const predicted = memory();
  model.dispose();
  console.log(JSON.stringify({ precision, loadMs, beforeMb: before.rss, loadedMb: loaded.rss, predictedMb: predicted.rss, peakMb: predicted.peak }));
  process.exit(0);
}

const { cpuBf16Available, cpuInt8Available } = await import(library);
const dir = path.join(root, '.cache/bench/weights');
const file = path.join(dir, `${MODEL}.safetensors`);
if (!existsSync(file)) {
  mkdirSync(dir, { recursive: true });
  console.log(`writing ${path.relative(root, file)}`);
  const made = spawnSync(process.execPath, [import.meta.filename, '--write', file], { stdio: 'inherit' });
  if (made.status !== 0) throw new Error(`writing ${file} failed`);
}

const files = [file];
const pth = path.join(dir, `${MODEL}.pth`);
if (existsSync(pth)) {
  files.push(pth);
} else if (existsSync(python)) {
  console.log(`writing ${path.relative(root, pth)}`);
  const script = 'import sys, torch\nfrom safetensors.torch import load_file\ntorch.save(load_file(sys.argv[1]), sys.argv[2])';
  const made = spawnSync(python, ['-c', script, file, pth], { stdio: 'inherit' });
  if (made.status !== 0) throw new Error(`writing ${pth} failed`);
  files.push(pth);
} else {
  console.log('the PyTorch reference is not installed (scripts/reference/setup): the .pth rows are left out');
}

const env = { ...process.env, RAYON_NUM_THREADS: process.env.RAYON_NUM_THREADS ?? '2' };
const rows = [];
for (const weights of files) {
  for (const precision of ['f32', ...(cpuBf16Available() ? ['bf16'] : []), ...(cpuInt8Available() ? ['int8'] : [])]) {
    const run = spawnSync(process.execPath, [import.meta.filename, '--load', weights, precision], { encoding: 'utf8', env });
    if (run.status !== 0) throw new Error(`loading ${weights} in ${precision} failed:\n${run.stderr}`);
    const row = { format: path.extname(weights).slice(1), ...JSON.parse(run.stdout.trim().split('\n').at(-1)) };
    console.log(row);
    rows.push(row);
  }
}

const date = new Date().toISOString().slice(0, 10);
const mb = (v) => v.toFixed(0);
writeJson('load-memory', { date, machine: machine(), model: MODEL, rows });
writeSection(
  'load-memory',
  `## Loading a model from a file (\`npm run bench:load\`)

${date}, ${machine()}. ${MODEL}'s weights (1.27 GB in f32, as safetensors and as a
\`torch.save\` state dict) loaded with \`MotivNet.load\` in a fresh Node process for each file
and precision, then one 1024 x 768 image predicted. Resident memory of the process in MB:
before the load (Node and the library loaded), after it, after the prediction, and its peak.

| file | precision | before | after the load | after one prediction | peak | load s |
|---|---|---|---|---|---|---|
${rows.map((r) => `| ${r.format} | ${r.precision} | ${mb(r.beforeMb)} | ${mb(r.loadedMb)} | ${mb(r.predictedMb)} | ${mb(r.peakMb)} | ${(r.loadMs / 1000).toFixed(1)} |`).join('\n')}`,
);
