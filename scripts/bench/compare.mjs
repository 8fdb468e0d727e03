// `npm run bench`: our core against the engines users would otherwise run, on the same model,
// batch, thread count and random weights, in one run:
//
// - PyTorch eager (the reference model as the upstream code builds it, attention through
//   `scaled_dot_product_attention`, default AdamW) and `torch.compile` of it: inference and
//   train steps;
// - ONNX Runtime through onnxruntime-node, in f32 and with its dynamic int8 quantization, and
//   OpenVINO in f32 and in its default precision (bf16 on CPUs with AVX512_BF16 or AMX), on the
//   model exported with `torch.onnx.export`: inference;
// - end to end from JPEG files: the reference's loader in its own process and as a
//   DataLoader with one worker per core.
//
// Rounds alternate (ours, then each peer) after each process's warm-up: at least 5 for
// sub-second cases, 3 for sapiens-0.3b; each round is a fresh process and reports the median
// of its iterations; rows give the median of the rounds with their min-max. Memory: each
// process's peak resident memory, and that peak minus the process's resident memory with its
// libraries loaded and before the model was built. The roofline: GFLOP/s of each side from
// the model's FLOPs, against a 2048^3 matmul measured here in f32 (our kernels), bf16
// (PyTorch's) and int8 (our VNNI kernel). Results go to docs/BENCHMARKS.md and docs/benchmarks/compare.json.
//
//   BENCH_CASES (comma list of case ids), BENCH_THREADS (default 2), BENCH_ROUNDS (override)
//   Needs scripts/reference/setup and scripts/bench/setup-peers (once).
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';

import { machine, python, referenceMissing, root, writeJson, writeSection } from './common.mjs';
import { benchJpegs, jpegDir } from './jpegs.mjs';

const host = execFileSync('rustc', ['-vV'], { encoding: 'utf8' }).match(/^host: (.*)$/m)[1];
const oursBin = path.join(root, 'target', host, 'release', 'motivnet-bench');
const threads = Number(process.env.BENCH_THREADS ?? 2);
const onnxDir = path.join(root, '.cache/bench/onnx');
const { resolveModelConfig } = await import(path.join(root, 'dist/index.js'));

const INFERENCE_PEERS = ['torch-eager', 'torch-compile', 'torch-eager-bf16', 'onnxruntime', 'onnxruntime-int8', 'openvino-f32', 'openvino-default'];
const TRAIN_PEERS = ['torch-eager', 'torch-compile', 'torch-eager-bf16'];
const CASES = [
  { id: 'forward-tiny', name: 'inference forward, tiny, batch 8', preset: 'tiny', batch: 8, kind: 'forward', iters: 10, rounds: 5, peers: INFERENCE_PEERS },
  { id: 'forward-small', name: 'inference forward, small, batch 2', preset: 'small', batch: 2, kind: 'forward', iters: 5, rounds: 5, peers: INFERENCE_PEERS },
  { id: 'forward-0.3b', name: 'inference forward, sapiens-0.3b 1024 x 768, batch 1', preset: 'sapiens-0.3b', batch: 1, kind: 'forward', iters: 1, rounds: 3, peers: INFERENCE_PEERS },
  { id: 'train-tiny', name: 'train step, tiny, batch 8', preset: 'tiny', batch: 8, kind: 'train', iters: 8, rounds: 5, peers: TRAIN_PEERS },
  { id: 'train-small', name: 'train step, small, batch 2', preset: 'small', batch: 2, kind: 'train', iters: 3, rounds: 5, peers: TRAIN_PEERS },
  { id: 'e2e-tiny', name: 'end to end: JPEG files -> train step, tiny, batch 8 (ms per batch)', preset: 'tiny', batch: 8, kind: 'e2e', iters: 10, rounds: 5, peers: ['torch-loader-serial', 'torch-loader-workers'] },
];
const PEER_NAMES = {
  'torch-eager': 'PyTorch eager',
  'torch-compile': 'PyTorch torch.compile',
  'torch-eager-bf16': 'PyTorch eager, torch.autocast bf16',
  onnxruntime: 'ONNX Runtime (onnxruntime-node)',
  'onnxruntime-int8': 'ONNX Runtime, dynamic quantization (onnxruntime-node)',
  'openvino-f32': 'OpenVINO f32',
  'openvino-default': 'OpenVINO default precision',
  'torch-loader-serial': 'PyTorch, loader in its process',
  'torch-loader-workers': 'PyTorch, DataLoader with a worker per core',
};
const selected = process.env.BENCH_CASES ? CASES.filter((c) => process.env.BENCH_CASES.split(',').includes(c.id)) : CASES;

function json(r, what) {
  if (r.status !== 0) throw new Error(`${what} failed: ${(r.stderr || r.stdout).trim().split('\n').slice(-3).join(' / ')}`);
  return JSON.parse(r.stdout.trim().split('\n').pop());
}

const threadEnv = { ...process.env, RAYON_NUM_THREADS: String(threads), OMP_NUM_THREADS: String(threads), MKL_NUM_THREADS: String(threads) };

function runOurs(c, precision = 'f32') {
  if (c.kind === 'e2e') {
    const j = json(spawnSync(process.execPath, [path.join(root, 'scripts/bench/e2e-ours.mjs'), jpegDir, c.preset, String(c.batch), String(c.iters)], { encoding: 'utf8', env: { ...threadEnv, POOL_THREADS: String(threads), CANDLE_NUM_THREADS: '1' } }), 'e2e (ours)');
    return { ms: j.ms, peakMb: j.peakRssMb, baselineMb: j.baselineRssMb };
  }
  const args = ['--model', c.preset, '--batch', String(c.batch), '--iters', String(c.iters), '--warmup', '1', '--precision', precision, c.kind === 'forward' ? '--skip-train' : '--skip-forward'];
  const j = json(spawnSync(oursBin, args, { encoding: 'utf8', env: threadEnv }), 'motivnet-bench');
  return { ms: c.kind === 'forward' ? j.forwardMs : j.trainStepMs, peakMb: j.peakRssMb, baselineMb: j.baselineRssMb, precision: j.precision };
}

/**
 * Whether our `precision` (bf16: a CPU with AVX512_BF16; int8: a CPU with AVX512-VNNI) runs here: asked
 * of the binary, which refuses it otherwise.
 */
function oursRuns(precision) {
  const r = spawnSync(oursBin, ['--model', 'tiny', '--batch', '1', '--iters', '1', '--warmup', '0', '--precision', precision, '--skip-train'], { encoding: 'utf8', env: threadEnv });
  if (r.status === 0) return true;
  console.log(`our ${precision} does not run here (${(r.stderr || r.stdout).trim().split('\n').pop()}): ${precision} peers are compared with our f32`);
  return false;
}

function onnxFile(c) {
  const file = path.join(onnxDir, `${c.preset}-b${c.batch}.onnx`);
  if (!existsSync(file)) {
    console.log(`exporting ${path.relative(root, file)}`);
    const r = spawnSync(python, [path.join(root, 'scripts/reference/export_onnx.py'), '--preset', c.preset, '--batch', String(c.batch), '--out', file], { encoding: 'utf8', env: threadEnv });
    if (r.status !== 0) throw new Error(`ONNX export of ${c.preset} failed: ${r.stderr.trim().split('\n').slice(-3).join(' / ')}`);
  }
  return file;
}

/** The f32 export quantized as ONNX Runtime's users quantize it (dynamic int8). */
function onnxInt8File(c) {
  const file = path.join(onnxDir, `${c.preset}-b${c.batch}-int8.onnx`);
  if (!existsSync(file)) {
    console.log(`quantizing ${path.relative(root, file)}`);
    const r = spawnSync(python, [path.join(root, 'scripts/reference/quantize_onnx.py'), '--onnx', onnxFile(c), '--out', file], { encoding: 'utf8', env: threadEnv });
    if (r.status !== 0) throw new Error(`int8 quantization of ${c.preset} failed: ${r.stderr.trim().split('\n').slice(-3).join(' / ')}`);
  }
  return file;
}

function runPeer(c, peer) {
  const torch = (extra) => {
    const args = [path.join(root, 'scripts/reference/bench_model.py'), '--case', c.kind, '--preset', c.preset, '--batch', String(c.batch), '--threads', String(threads), '--iters', String(c.iters), '--warmup', '1', ...extra];
    const j = json(spawnSync(python, args, { encoding: 'utf8', env: threadEnv }), `${peer}`);
    return { ms: j.ms, peakMb: j.peakRssMb, baselineMb: j.baselineRssMb, version: `PyTorch ${j.torch}`, precision: 'f32' };
  };
  switch (peer) {
    case 'torch-eager':
      return torch([]);
    case 'torch-compile':
      return torch(['--compile']);
    case 'torch-eager-bf16':
      return { ...torch(['--autocast', 'bf16']), precision: 'bf16' };
    case 'torch-loader-serial':
      return torch(['--dir', jpegDir]);
    case 'torch-loader-workers':
      return torch(['--dir', jpegDir, '--workers', String(threads)]);
    case 'onnxruntime':
    case 'onnxruntime-int8': {
      const int8 = peer === 'onnxruntime-int8';
      const j = json(spawnSync(process.execPath, [path.join(root, 'scripts/bench/peers/ort.mjs'), int8 ? onnxInt8File(c) : onnxFile(c), String(threads), String(c.iters), '1'], { encoding: 'utf8', env: threadEnv }), peer);
      return { ms: j.ms, peakMb: j.peakRssMb, baselineMb: j.baselineRssMb, version: `onnxruntime-node ${j.version}`, precision: int8 ? 'int8' : 'f32' };
    }
    case 'openvino-f32':
    case 'openvino-default': {
      const precision = peer === 'openvino-f32' ? 'f32' : 'default';
      const args = [path.join(root, 'scripts/reference/bench_openvino.py'), '--onnx', onnxFile(c), '--precision', precision, '--threads', String(threads), '--iters', String(c.iters), '--warmup', '1'];
      const j = json(spawnSync(python, args, { encoding: 'utf8', env: threadEnv }), peer);
      return { ms: j.ms, peakMb: j.peakRssMb, baselineMb: j.baselineRssMb, version: `OpenVINO ${j.version.split('-')[0]}`, precision: j.precision };
    }
    default:
      throw new Error(`unknown peer ${peer}`);
  }
}

/** Multiply-adds x 2 of one image through the model (forward); a train step counts three times that. */
function forwardFlops(preset) {
  const { encoder: e, head: h } = resolveModelConfig(preset);
  const [gh, gw] = [Math.floor((e.inputHeight + 2 * e.patchPadding - e.patchSize) / e.patchSize) + 1, Math.floor((e.inputWidth + 2 * e.patchPadding - e.patchSize) / e.patchSize) + 1];
  const n = gh * gw;
  const d = e.embedDim;
  const hidden = Math.round(d * e.mlpRatio);
  const patch = 2 * n * 3 * e.patchSize * e.patchSize * d;
  const block = 2 * n * d * 3 * d + 4 * n * n * d + 2 * n * d * d + 4 * n * d * hidden;
  const k = h.groups ?? Math.min(100, h.numClasses);
  const em = h.embedDim;
  const layer = 2 * k * em * em + 2 * n * em * 2 * em + 4 * k * n * em + 2 * k * em * em + 4 * k * em * h.feedforward;
  return patch + e.depth * block + 2 * n * d * em + h.layers * layer + 2 * k * em;
}

const stats = (xs) => {
  const s = xs.slice().sort((a, b) => a - b);
  return { median: s[Math.floor(s.length / 2)], min: s[0], max: s[s.length - 1] };
};

// ---------------------------------------------------------------- run

if (process.env.BENCH_RENDER_ONLY) {
  // Redraw the section from the last run's figures (after a change to this report).
  const last = JSON.parse(readFileSync(path.join(root, 'docs/benchmarks/compare.json'), 'utf8'));
  report(last.cases, last.roofline, last.peers, last.date, last.machine);
  process.exit(0);
}
if (!existsSync(oursBin)) throw new Error(`${oursBin} is missing: run npm run bench (it builds it)`);
if (!existsSync(python)) throw new Error(referenceMissing());
if (!existsSync(path.join(root, '.cache/bench/peers/node_modules/onnxruntime-node'))) throw new Error('the benchmark peers are not installed: run scripts/bench/setup-peers (once)');
if (selected.some((c) => c.kind === 'e2e')) await benchJpegs(240);
// Exported before any round, so no export runs between timings.
for (const c of selected) if (c.peers.includes('onnxruntime')) onnxFile(c);

const oursRoof = json(spawnSync(oursBin, ['--roofline', '--iters', '5'], { encoding: 'utf8', env: threadEnv }), 'roofline (ours)');
const roofline = {
  f32: oursRoof.gflops,
  torch: json(spawnSync(python, [path.join(root, 'scripts/reference/bench_model.py'), '--case', 'roofline', '--threads', String(threads), '--iters', '5'], { encoding: 'utf8', env: threadEnv }), 'roofline (PyTorch)'),
};
// Our own bf16 kernel's product (AMX tiles, or AVX512_BF16's dot products without them), where
// this CPU has one: beside the roof (PyTorch's bf16 matmul), the measure of how far our bf16
// products are from it. Our int8 kernel's product, where the CPU
// has VNNI: the roof of int8 rows.
const oursBf16Run = spawnSync(oursBin, ['--roofline', '--precision', 'bf16', '--iters', '5'], { encoding: 'utf8', env: threadEnv });
const oursBf16Roof = oursBf16Run.status === 0 ? json(oursBf16Run, 'roofline bf16 (ours)') : null;
const oursInt8Roof = spawnSync(oursBin, ['--roofline', '--precision', 'int8', '--iters', '5'], { encoding: 'utf8', env: threadEnv });
const roof = {
  f32OursGflops: roofline.f32,
  f32TorchGflops: roofline.torch.f32Gflops,
  bf16TorchGflops: roofline.torch.bf16Gflops,
  bf16OursGflops: oursBf16Roof?.gflops ?? null,
  // "AMX" or "AVX512_BF16": what our bf16 products ran on.
  bf16OursKernel: oursBf16Roof?.roofline.match(/\((.*)\)/)?.[1] ?? null,
  int8OursGops: oursInt8Roof.status === 0 ? json(oursInt8Roof, 'roofline int8 (ours)').gflops : null,
  // What no f32 product can pass: the threads' multiply-adds alone (AVX-512).
  fmaPeakGflops: oursRoof.fmaPeakGflops ?? null,
};
// The f32 roof: the faster of the two matmuls (PyTorch's library or our `gemm`).
const f32Roof = Math.max(roof.f32OursGflops, roof.f32TorchGflops);
console.log(`roofline, ${threads} threads: f32 ${roof.f32OursGflops.toFixed(0)} GFLOP/s (ours), ${roof.f32TorchGflops.toFixed(0)} (PyTorch); bf16 ${roof.bf16TorchGflops.toFixed(0)} (PyTorch); int8 ${roof.int8OursGops?.toFixed(0) ?? '-'} GOP/s (ours); multiply-add peak ${roof.fmaPeakGflops?.toFixed(0) ?? '-'}`);

/** The roof of rows computed in `precision`: a large matmul's rate in it, here. */
function roofOf(precision) {
  return { f32: f32Roof, bf16: roof.bf16TorchGflops, int8: roof.int8OursGops ?? null }[precision] ?? null;
}

const rows = [];
const versions = new Set();
const bf16Here = selected.some((c) => c.kind === 'forward' || c.kind === 'train') && oursRuns('bf16');
const int8Here = selected.some((c) => c.kind === 'forward') && oursRuns('int8');
for (const c of selected) {
  const rounds = Number(process.env.BENCH_ROUNDS ?? c.rounds);
  // Our bf16 runs beside our f32 where a bf16 peer is compared (inference and train steps on a
  // CPU with AVX512_BF16), and our int8 where an int8 peer is (inference on a CPU with VNNI).
  const oursPrecisions = ['f32', ...(c.kind !== 'e2e' && bf16Here ? ['bf16'] : []), ...(c.kind === 'forward' && int8Here ? ['int8'] : [])];
  const ours = Object.fromEntries(oursPrecisions.map((p) => [p, []]));
  const peers = Object.fromEntries(c.peers.map((p) => [p, []]));
  for (let r = 0; r < rounds; r++) {
    for (const precision of oursPrecisions) ours[precision].push(runOurs(c, precision));
    for (const p of c.peers) peers[p].push(runPeer(c, p));
    const oursNow = oursPrecisions.map((p) => `${p} ${ours[p].at(-1).ms.toFixed(1)}`).join(', ');
    console.log(`${c.name}, round ${r + 1}/${rounds}: ours ${oursNow} ms; ${c.peers.map((p) => `${p} ${peers[p].at(-1).ms.toFixed(1)}`).join(', ')}`);
  }
  const flops = c.kind === 'e2e' ? null : forwardFlops(c.preset) * c.batch * (c.kind === 'train' ? 3 : 1);
  // A bf16 peer meets our bf16 where it runs; every other peer our f32. PyTorch eager's train
  // step also meets our bf16 train step, the means the train target allows where accuracy holds
  // (its cost is measured in docs/BENCHMARKS.md).
  // ONNX Runtime's CPU provider has no bf16 on x86 (its bf16 fast math is for Arm64), so a
  // user who picks it runs f32: its forward meets our f32 and, as a second row, our bf16, whose
  // accuracy cost docs/BENCHMARKS.md states.
  // An int8 peer (ONNX Runtime's dynamic quantization) meets our int8 where it runs.
  const pairs = c.peers.map((p) => [p, peers[p][0].precision !== 'f32' && ours[peers[p][0].precision] ? peers[p][0].precision : 'f32']);
  if (c.kind === 'train' && ours.bf16) pairs.splice(1, 0, ['torch-eager', 'bf16']);
  if (c.kind === 'forward' && ours.bf16 && peers.onnxruntime) {
    pairs.splice(pairs.findIndex(([p]) => p === 'onnxruntime') + 1, 0, ['onnxruntime', 'bf16']);
  }
  for (const [p, oursPrecision] of pairs) {
    const runs = peers[p];
    const q = stats(runs.map((x) => x.ms));
    versions.add(runs[0].version);
    const precision = runs[0].precision;
    const oursRuns = ours[oursPrecision];
    const o = stats(oursRuns.map((x) => x.ms));
    const oursAbove = Math.max(...oursRuns.map((x) => x.peakMb - x.baselineMb));
    const ratio = o.median / q.median;
    // The targets of the comparison: train steps at half PyTorch eager's time or less,
    // inference ahead of OpenVINO at the same precision and at 0.7 of ONNX Runtime or less.
    const target = c.kind === 'train' && p === 'torch-eager' ? 0.5 : c.kind === 'forward' && p.startsWith('onnxruntime') ? 0.7 : c.kind === 'forward' && p.startsWith('openvino') ? 1.0 : null;
    // A ratio counts for the target where ours computes at the peer's precision or a finer
    // one (our f32 against a bf16 peer, where our bf16 does not run), and where our bf16 is the
    // means the target allows: train steps, and ONNX Runtime, which has no bf16 here.
    const precisionCounts = oursPrecision === 'f32' || oursPrecision === precision || c.kind === 'train' || (p === 'onnxruntime' && oursPrecision === 'bf16');
    const peerAbove = Math.max(...runs.map((x) => x.peakMb - x.baselineMb));
    const gflops = (ms) => (flops ? flops / (ms * 1e6) : null);
    rows.push({
      name: c.name,
      peer: PEER_NAMES[p],
      peerPrecision: precision,
      oursMs: o.median,
      oursMinMs: o.min,
      oursMaxMs: o.max,
      referenceMs: q.median,
      referenceMinMs: q.min,
      referenceMaxMs: q.max,
      ratio,
      target,
      oursPrecision,
      met: target === null ? null : ratio <= target && precisionCounts,
      oursPeakMb: Math.max(...oursRuns.map((x) => x.peakMb)),
      oursAboveBaselineMb: oursAbove,
      referencePeakMb: Math.max(...runs.map((x) => x.peakMb)),
      referenceAboveBaselineMb: peerAbove,
      memoryMet: oursAbove <= peerAbove,
      oursGflops: gflops(o.median),
      referenceGflops: gflops(q.median),
      oursRoofFraction: flops && roofOf(oursPrecision) ? gflops(o.median) / roofOf(oursPrecision) : null,
      referenceRoofFraction: flops && roofOf(precision) ? gflops(q.median) / roofOf(precision) : null,
      rounds,
      date: new Date().toISOString().slice(0, 10),
    });
  }
}

// A run of some cases (BENCH_CASES) keeps the last run's rows of the others, measured on this
// same machine, so the report stays whole; each row keeps its date.
const lastFile = path.join(root, 'docs/benchmarks/compare.json');
if (process.env.BENCH_CASES && existsSync(lastFile)) {
  const last = JSON.parse(readFileSync(lastFile, 'utf8'));
  const measured = new Set(selected.map((c) => c.name));
  if (last.machine === machine()) {
    const kept = last.cases.filter((r) => !measured.has(r.name));
    last.peers.forEach((v) => versions.add(v));
    const order = (r) => CASES.findIndex((c) => c.name === r.name);
    rows.splice(0, rows.length, ...[...kept, ...rows].sort((a, b) => order(a) - order(b)));
  }
}
const date = new Date().toISOString().slice(0, 10);
writeJson('compare', { date, machine: machine(), threads, roofline: roof, peers: [...versions], cases: rows });
report(rows, roof, [...versions], date, machine());
for (const r of rows) console.log(`${r.name} vs ${r.peer}: ratio ${r.ratio.toFixed(2)}${r.target === null ? '' : ` (target ${r.target}: ${r.met ? 'met' : 'not met'})`}`);

// ---------------------------------------------------------------- report

/** The run's date, or the range of its rows' dates when some were kept from an earlier run. */
function dateRange(rows, date) {
  const dates = [...new Set(rows.map((r) => r.date).filter(Boolean))].sort();
  return dates.length > 1 ? `rows measured ${dates[0]} to ${dates.at(-1)}` : date;
}

function report(rows, roof, versions, date, machineName) {
  const f = (v, d = 1) => (v === null || v === undefined || Number.isNaN(v) ? '-' : v.toFixed(d));
  const pct = (v) => (v === null ? '-' : `${(100 * v).toFixed(0)}%`);
  const verdict = (r) => (r.target === null ? '-' : `${r.met ? 'yes' : '**no**'} (${f(r.target, 1)})`);
  const table = rows.map(
    (r) =>
      `| ${r.name} | ${r.peer}${r.peerPrecision !== 'f32' ? ` (${r.peerPrecision})` : ''} | ${r.oursPrecision !== 'f32' ? `(${r.oursPrecision}) ` : ''}${f(r.oursMs)} (${f(r.oursMinMs)}-${f(r.oursMaxMs)}) | ${f(r.referenceMs)} (${f(r.referenceMinMs)}-${f(r.referenceMaxMs)}) | ${f(r.ratio, 2)} | ${verdict(r)} | ${f(r.oursGflops, 0)} (${pct(r.oursRoofFraction)}) | ${f(r.referenceGflops, 0)} (${pct(r.referenceRoofFraction)}) | ${f(r.oursAboveBaselineMb, 0)} / ${f(r.referenceAboveBaselineMb, 0)}${r.memoryMet ? '' : ' **(more)**'} | ${f(r.oursPeakMb, 0)} / ${f(r.referencePeakMb, 0)} |`,
  );
  // Each target our f32 misses, against the machine's limit: the peer's time times the target
  // asks for the model's FLOPs at our GFLOP/s x ratio / target (twice PyTorch eager's for a
  // train step at 0.5).
  const asked = rows
    .filter((r) => r.target !== null && !r.met && r.oursPrecision === 'f32' && r.oursGflops)
    .map((r) => {
      const gflops = (r.oursGflops * r.ratio) / r.target;
      return `- ${r.name}, against ${r.peer} (${f(r.target, 1)}): ${f(gflops, 0)} GFLOP/s, ${pct(gflops / roof.fmaPeakGflops)} of the peak (ours ran at ${f(r.oursGflops, 0)}, ${pct(r.oursGflops / roof.fmaPeakGflops)})`;
    });
  const limits =
    roof.fmaPeakGflops && asked.length
      ? `\n\nWhat each target our f32 misses asks of it: the model's FLOPs in the peer's time times the target, against the
threads' multiply-add peak of this run (${f(roof.fmaPeakGflops, 0)} GFLOP/s).\n${asked.join('\n')}`
      : '';
  writeSection(
    'compare',
    `## Ours against the engines users would otherwise run

\`npm run bench\` — ${dateRange(rows, date)}, ${machineName}; ${threads} threads on every side (RAYON_NUM_THREADS,
torch.set_num_threads, intra-op threads), random weights, the same model. Peers: ${versions.join(', ')}.
The PyTorch model is scripts/reference/motivnet_ref.py, built as the upstream code builds it, attention through
\`scaled_dot_product_attention\`; ONNX Runtime and OpenVINO run it as exported by \`torch.onnx.export\` (opset 18).

Each row: the median of alternating rounds (a fresh process each; 5 rounds, 3 for sapiens-0.3b), min-max in brackets,
each round the median of its iterations after one warm-up. ratio = ours / peer (below 1: ours is faster). Target: train
steps at 0.5 of PyTorch eager or less; inference ahead of OpenVINO at the same precision (1.0) and at 0.7 of ONNX Runtime
or less. A bf16 peer is compared with our \`precision: 'bf16'\` (products on AMX tiles, or on AVX512_BF16's dot products
where the CPU has no tiles; marked "(bf16)" in the ours column) where this CPU has AVX512_BF16, else with our f32, which
counts where it is faster. ${roof.bf16OursKernel ? `Here our bf16 ran on ${roof.bf16OursKernel === 'AMX' ? 'AMX tiles' : "AVX512_BF16's dot products (no AMX)"}. ` : ''}Where our bf16 runs, train steps are compared with PyTorch eager twice, our
f32 and our bf16 (the encoder's Linear products in bf16, forward and backward; its accuracy cost is measured
below). ONNX Runtime, which computes in f32 on x86 (its CPU provider's bf16 is for Arm64 only), is compared twice
there too: with our f32 and with our bf16 (its accuracy cost is under "bf16 on the CPU" below). ONNX Runtime's dynamic
int8 (\`quantize_dynamic\` of the same export: int8 weights with a scale per output channel, uint8 activations quantized
as it runs; the attention's two products stay f32 \`MatMul\`s) is compared with our \`precision: 'int8'\` (the encoder's Linear products and attention products on VNNI, marked "(int8)"; its
accuracy cost is under "int8 on the CPU" below) where this CPU has AVX512-VNNI, else with our f32. GFLOP/s from the model's FLOPs,
with the fraction of this machine's roof: a 2048^3 matmul, in f32 the faster of ours (${f(roof.f32OursGflops, 0)} GFLOP/s) and
PyTorch's (${f(roof.f32TorchGflops, 0)}), and ${f(roof.bf16TorchGflops, 0)} in bf16 (PyTorch), the roof of bf16 rows${roof.bf16OursGflops ? ` (our ${roof.bf16OursKernel} kernel's: ${f(roof.bf16OursGflops, 0)})` : ''}${roof.int8OursGops ? `; int8 rows count GOP/s against our int8 kernel's ${f(roof.int8OursGops, 0)}` : ''}.${roof.fmaPeakGflops ? ` The threads' f32 multiply-adds alone, without a load or a store, reach ${f(roof.fmaPeakGflops, 0)} GFLOP/s: no f32 product passes that.` : ''} Memory in MB:
each process's peak minus its resident memory with its libraries loaded and before the model was built ("above
baseline", ours / peer), and the absolute peak.

| case | peer | ours ms | peer ms | ratio | target met | ours GFLOP/s (roof) | peer GFLOP/s (roof) | MB above baseline | peak MB |
|---|---|---|---|---|---|---|---|---|---|
${table.join('\n')}${limits}`,
  );
}
