// `npm run bench:data`: the label readers and the sampling at AffectNet's real size. Writes
// AffectNet's manually annotated set as its owners unpack it (287,651 training rows with
// their landmarks, placeholder image files in about a thousand folders) and the same entries
// as the reference's JSON label file, once, under .cache/bench/affectnet; then times each
// step (median of 3 runs after a warm-up) and records the figures in docs/BENCHMARKS.md and
// docs/benchmarks/data.json. Targets: each reader 2 s or less, sampling + split + epoch
// order 1 s or less.
import { statSync } from 'node:fs';
import path from 'node:path';

import { affectNetLayout } from './affectnet-layout.mjs';
import { machine, root, writeJson, writeSection } from './common.mjs';

const data = await import(path.join(root, 'dist/data/index.js'));
const RUNS = 3;

const started = performance.now();
const layout = await affectNetLayout(path.join(root, '.cache/bench/affectnet'));
const setupS = (performance.now() - started) / 1000;

async function time(run) {
  await run(); // warm-up: file cache, JIT
  const ms = [];
  let result;
  for (let i = 0; i < RUNS; i++) {
    const t = performance.now();
    result = await run();
    ms.push(performance.now() - t);
  }
  ms.sort((a, b) => a - b);
  return { ms: ms[Math.floor(RUNS / 2)], result };
}

const csv = await time(() => data.readAffectNet({ csv: layout.training, imagesDir: layout.images, classes: 8, cropToFace: true }));
const json = await time(() => data.readLabelsJson({ file: layout.json, imagesDir: layout.images, classes: 8 }));
const samples = csv.result.samples;
const sampling = await time(() => {
  const { samples: picked } = data.balancedSample(samples, 8, { seed: 0 });
  const { train } = data.splitTrainValidation(picked, 8, { seed: 0 });
  return data.epochOrder(train, 0, 0);
});
const unbalanced = await time(() => {
  const { train } = data.splitTrainValidation(samples, 8, { seed: 0, validationFraction: 0.2, stratified: false });
  return data.epochOrder(train, 0, 0);
});

const mb = (f) => (statSync(f).size / 2 ** 20).toFixed(0);
const rows = [
  ['AffectNet training list (CSV, face boxes)', `${samples.length.toLocaleString('en-US')} rows, ${mb(layout.training)} MB`, csv.ms, 2000],
  ["the reference's JSON label file", `${json.result.samples.length.toLocaleString('en-US')} entries, ${mb(layout.json)} MB`, json.ms, 2000],
  ['balanced sample + 9:1 split + epoch order (paper)', `${sampling.result.length.toLocaleString('en-US')} training images`, sampling.ms, 1000],
  ['random 80/20 split + epoch order (upstream-code)', `${unbalanced.result.length.toLocaleString('en-US')} training images`, unbalanced.ms, 1000],
];
const date = new Date().toISOString().slice(0, 10);
const table = rows.map(([what, size, ms, target]) => `| ${what} | ${size} | ${(ms / 1000).toFixed(2)} | ${(target / 1000).toFixed(0)} | ${ms <= target ? 'yes' : '**no**'} |`);
writeSection(
  'data',
  `## Label readers and sampling at AffectNet's size

\`npm run bench:data\` — ${date}, ${machine()}.
AffectNet's manually annotated set as unpacked (\`Manually_Annotated_file_lists/training.csv\`
with 136 landmark coordinates a row, one placeholder file per image in 1,000 folders, so paths
resolve as they would), and the same entries as the reference's JSON label file. Median of
${RUNS} runs after a warm-up; the file cache is warm.

| step | size | seconds | target s | within |
|---|---|---|---|---|
${table.join('\n')}
`,
);
writeJson('data', { date, machine: machine(), runs: RUNS, setupSeconds: setupS, results: rows.map(([what, size, ms, target]) => ({ what, size, ms, targetMs: target })) });
for (const [what, size, ms, target] of rows) console.log(`${what} (${size}): ${(ms / 1000).toFixed(2)} s (target ${target / 1000} s)`);
