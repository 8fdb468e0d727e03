// `npm run bench`: our core against the PyTorch reference, side by side, on the same config,
// batch, thread count and random weights. Runs alternate (ours, reference, ours, ...) after
// each side's warm-up; each case reports the median of the rounds and the ratio ours /
// reference, and the peak resident memory of each side. Results go to docs/BENCHMARKS.md and
// docs/benchmarks/compare.json.
//
//   BENCH_ROUNDS (default 2), BENCH_THREADS (default: all cores), BENCH_CASES (comma list of case ids)
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { machine, python, referenceMissing, root, writeJson, writeSection } from './common.mjs';

const host = execFileSync('rustc', ['-vV'], { encoding: 'utf8' }).match(/^host: (.*)$/m)[1];
const ours = path.join(root, 'target', host, 'release', 'motivnet-bench');
const threads = Number(process.env.BENCH_THREADS ?? os.availableParallelism());
const rounds = Number(process.env.BENCH_ROUNDS ?? 2);

const CASES = [
  { id: 'forward-tiny', name: 'inference forward, tiny, batch 8', preset: 'tiny', batch: 8, kind: 'forward', iters: 10 },
  { id: 'train-tiny', name: 'train step, tiny, batch 8', preset: 'tiny', batch: 8, kind: 'train', iters: 8, memory: true },
  { id: 'train-small', name: 'train step, small, batch 2', preset: 'small', batch: 2, kind: 'train', iters: 3 },
  { id: 'forward-0.3b', name: 'inference forward, sapiens-0.3b 1024 x 768, batch 1', preset: 'sapiens-0.3b', batch: 1, kind: 'forward', iters: 1, memory: true },
  { id: 'e2e-tiny', name: 'end to end: JPEG files -> train step, tiny, batch 8 (ms per batch)', preset: 'tiny', batch: 8, kind: 'e2e', iters: 10 },
];
const jpegs = path.join(root, '.cache/bench/jpegs');
const selected = process.env.BENCH_CASES ? CASES.filter((c) => process.env.BENCH_CASES.split(',').includes(c.id)) : CASES;

function runOurs(c) {
  if (c.kind === 'e2e') {
    const r = spawnSync(process.execPath, [path.join(root, 'scripts/bench/e2e-ours.mjs'), jpegs, c.preset, String(c.batch), String(c.iters)], { encoding: 'utf8', env: { ...process.env, RAYON_NUM_THREADS: String(threads) } });
    if (r.status !== 0) throw new Error(`e2e (ours) failed: ${r.stderr}`);
    const j = JSON.parse(r.stdout.trim().split('\n').pop());
    return { ms: j.ms, peakMb: j.peakRssMb };
  }
  const args = ['--model', c.preset, '--batch', String(c.batch), '--iters', String(c.iters), '--warmup', '1', c.kind === 'forward' ? '--skip-train' : '--skip-forward'];
  const r = spawnSync(ours, args, { encoding: 'utf8', env: { ...process.env, RAYON_NUM_THREADS: String(threads) } });
  if (r.status !== 0) throw new Error(`motivnet-bench failed: ${r.stderr}`);
  const j = JSON.parse(r.stdout.trim().split('\n').pop());
  return { ms: c.kind === 'forward' ? j.forwardMs : j.trainStepMs, peakMb: j.peakRssMb };
}

function runReference(c) {
  const args = [path.join(root, 'scripts/reference/bench_model.py'), ...(c.kind === 'e2e' ? ['--dir', jpegs] : []), '--case', c.kind, '--preset', c.preset, '--batch', String(c.batch), '--threads', String(threads), '--iters', String(c.iters), '--warmup', '1'];
  const r = spawnSync(python, args, { encoding: 'utf8', env: { ...process.env, OMP_NUM_THREADS: String(threads), MKL_NUM_THREADS: String(threads) } });
  if (r.status !== 0) throw new Error(`reference failed: ${r.stderr.trim().split('\n').pop()}`);
  const j = JSON.parse(r.stdout.trim().split('\n').pop());
  return { ms: j.ms, peakMb: j.peakRssMb, torch: j.torch };
}

const median = (xs) => xs.slice().sort((a, b) => a - b)[Math.floor(xs.length / 2)];

if (!existsSync(ours)) throw new Error(`${ours} is missing: run npm run bench (it builds it)`);
if (selected.some((c) => c.kind === 'e2e') && !existsSync(jpegs)) throw new Error(`${jpegs} is missing: run npm run bench:preprocess once (it writes the JPEG files)`);
const haveReference = existsSync(python);
if (!haveReference) console.log(referenceMissing());
const results = [];
// The last run's version stands for the cases it measured, until a case runs again.
const previousRun = existsSync(path.join(root, 'docs/benchmarks/compare.json')) ? JSON.parse(readFileSync(path.join(root, 'docs/benchmarks/compare.json'), 'utf8')) : { cases: [] };
let torchVersion = previousRun.torch ?? 'not installed';
for (const c of selected) {
  const a = [];
  const b = [];
  for (let r = 0; r < rounds; r++) {
    a.push(runOurs(c));
    if (haveReference) b.push(runReference(c));
  }
  if (b[0]?.torch) torchVersion = b[0].torch;
  const oursMs = median(a.map((x) => x.ms));
  const referenceMs = b.length ? median(b.map((x) => x.ms)) : null;
  const row = {
    name: c.name,
    oursMs,
    referenceMs,
    ratio: referenceMs ? oursMs / referenceMs : null,
    oursPeakMb: Math.max(...a.map((x) => x.peakMb)),
    referencePeakMb: b.length ? Math.max(...b.map((x) => x.peakMb)) : null,
    rounds,
    date: new Date().toISOString().slice(0, 10),
  };
  results.push(row);
  console.log(`${c.name}: ours ${oursMs.toFixed(1)} ms, reference ${referenceMs?.toFixed(1) ?? '-'} ms, ratio ${row.ratio?.toFixed(2) ?? '-'}; peak ${row.oursPeakMb.toFixed(0)} / ${row.referencePeakMb?.toFixed(0) ?? '-'} MB`);
}

// Cases not run this time keep their last numbers (BENCH_CASES runs a subset).
for (const old of previousRun.cases) if (!results.some((r) => r.name === old.name)) results.push(old);
results.sort((a, b) => CASES.findIndex((c) => c.name === a.name) - CASES.findIndex((c) => c.name === b.name));
const date = new Date().toISOString().slice(0, 10);
writeJson('compare', { date, machine: machine(), threads, rounds, torch: torchVersion, cases: results });
const fmt = (v, d = 1) => (v === null || v === undefined ? '-' : v.toFixed(d));
writeSection(
  'compare',
  `## Ours versus the PyTorch reference

\`npm run bench\` — ${date}, ${machine()}; ${threads} threads on both sides (RAYON_NUM_THREADS /
torch.set_num_threads), random weights, the median of alternating rounds (count per case), each the median of its iterations
after one warm-up. Cases not rerun keep the numbers of their last run (date per case).
PyTorch ${torchVersion}; the reference is scripts/reference/motivnet_ref.py, built as the upstream code builds the
model, attention through \`torch.nn.functional.scaled_dot_product_attention\`.
Targets: ratio 1.0 or below, peak memory no higher than the reference's.

| case | ours ms | reference ms | ours / reference | ours peak MB | reference peak MB | rounds | run |
|---|---|---|---|---|---|---|---|
${results.map((r) => `| ${r.name} | ${fmt(r.oursMs)} | ${fmt(r.referenceMs)} | ${fmt(r.ratio, 2)} | ${fmt(r.oursPeakMb, 0)} | ${fmt(r.referencePeakMb, 0)} | ${r.rounds ?? '-'} | ${r.date ?? '-'} |`).join('\n')}`,
);
