// GPU verification of a CUDA build (`npm run build:cuda`), for a machine with an NVIDIA GPU.
// Run from the repository root:  node scripts/cuda/verify.mjs [--out FILE] [--presets sapiens-0.3b,sapiens-1b]
//   [--device cuda:0]   (--device cpu dry-runs the script itself on a machine without a GPU)
//
// 1. Agreement: the test fixture model on the CPU and on cuda:0 gives the same logits, and
//    one train step (forward, backward, AdamW) the same loss and the same logits after it.
//    In bf16 (precision 'bf16', GPU only) the same model must stay within bf16's precision of
//    the f32 CPU results.
// 2. Timings at 1024 x 768, batch 1, random weights: inference forward and train step of each
//    preset on the GPU in f32 and in bf16 (median of 5 after 2 warm-ups), and our peak GPU
//    memory (nvidia-smi, sampled every 50 ms), beside PyTorch's on the same GPU (f32, and bf16
//    under torch.autocast) when `python3` there has a CUDA-enabled torch
//    (scripts/reference/bench_model.py --device cuda [--autocast bf16]).
// Prints one JSON object and writes it to --out (default: $OUT/cuda-verify.json or
// ./cuda-verify.json). Exits 1 if the CPU and GPU disagree.
import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const args = process.argv.slice(2);
const flag = (name, fallback) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : fallback;
};
const outFile = flag('--out', path.join(process.env.OUT ?? '.', 'cuda-verify.json'));
const presets = flag('--presets', 'sapiens-0.3b,sapiens-1b').split(',');
const gpu = flag('--device', 'cuda:0');

const { native } = await import(path.join(root, 'dist/native.js'));
const { MotivNet } = await import(path.join(root, 'dist/index.js'));
if (gpu !== 'cpu' && !native.cudaAvailable()) {
  console.error('this addon was built without CUDA: run scripts/cuda/setup, then npm run build:cuda');
  process.exit(2);
}

/** The tensors of a safetensors file as Float32Array / BigInt64Array, by name. */
function readSafetensors(file) {
  const bytes = readFileSync(file);
  const headerLen = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + headerLen).toString('utf8'));
  const out = {};
  for (const [name, t] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const [a, b] = t.data_offsets;
    const slice = bytes.buffer.slice(bytes.byteOffset + 8 + headerLen + a, bytes.byteOffset + 8 + headerLen + b);
    out[name] = { shape: t.shape, data: t.dtype === 'I64' ? new BigInt64Array(slice) : new Float32Array(slice) };
  }
  return out;
}

const maxDiff = (a, b) => a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i])), 0);

async function agreement() {
  const fixtures = path.join(root, 'crates/motivnet/tests/fixtures');
  const batch = readSafetensors(path.join(fixtures, 'batch.safetensors'));
  const input = { tensor: batch.x.data, batchSize: batch.x.shape[0] };
  const labels = Array.from(batch.labels.data, Number);
  const result = {};
  const runs = {};
  // bf16 is refused on the CPU: a dry run (--device cpu) compares f32 only.
  const variants = [['cpu', 'cpu', 'f32'], ['gpu', gpu, 'f32'], ...(gpu === 'cpu' ? [] : [['gpuBf16', gpu, 'bf16']])];
  for (const [key, device, precision] of variants) {
    const model = await MotivNet.load({ model: path.join(fixtures, 'config.json'), weights: path.join(fixtures, 'weights.safetensors'), device, precision, seed: 0 });
    const before = await model.predict(input);
    const step = await model.trainStep(input, labels, { encoderLr: 1e-3, decoderLr: 1e-3 });
    const after = await model.predict(input);
    runs[key] = { before: before.logits, loss: step.loss, after: after.logits };
    model.dispose();
  }
  result.logitsMaxDiff = maxDiff(runs.cpu.before, runs.gpu.before);
  result.lossDiff = Math.abs(runs.cpu.loss - runs.gpu.loss);
  result.logitsAfterStepMaxDiff = maxDiff(runs.cpu.after, runs.gpu.after);
  result.ok = result.logitsMaxDiff < 1e-3 && result.lossDiff < 1e-4 && result.logitsAfterStepMaxDiff < 1e-3;
  if (runs.gpuBf16) {
    // bf16 keeps 8 bits of mantissa: agreement to a few percent of the logits' scale.
    const scale = Math.max(1, ...runs.cpu.before.map(Math.abs));
    const bf16 = {
      logitsMaxDiff: maxDiff(runs.cpu.before, runs.gpuBf16.before),
      lossDiff: Math.abs(runs.cpu.loss - runs.gpuBf16.loss),
      logitsAfterStepMaxDiff: maxDiff(runs.cpu.after, runs.gpuBf16.after),
    };
    bf16.ok = bf16.logitsMaxDiff < 0.05 * scale && bf16.lossDiff < 0.02 * Math.max(1, runs.cpu.loss) && bf16.logitsAfterStepMaxDiff < 0.05 * scale;
    result.bf16 = bf16;
    result.ok = result.ok && bf16.ok;
  }
  return result;
}

/** Polls nvidia-smi for this process's GPU memory while `work` runs; resolves to [result, peak MiB]. */
async function withPeakGpuMemory(work) {
  let peak = 0;
  const sample = () => {
    const r = spawnSync('nvidia-smi', ['--query-compute-apps=pid,used_memory', '--format=csv,noheader,nounits'], { encoding: 'utf8' });
    for (const line of (r.stdout ?? '').split('\n')) {
      const [pid, mib] = line.split(',').map((s) => Number(s.trim()));
      if (pid === process.pid) peak = Math.max(peak, mib);
    }
  };
  const timer = setInterval(sample, 50);
  try {
    const result = await work();
    sample();
    return [result, peak];
  } finally {
    clearInterval(timer);
  }
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function timeOurs(preset, precision) {
  const model = await MotivNet.load({ model: preset, device: gpu, precision, seed: 0 });
  const { inputHeight: h, inputWidth: w } = model.config.encoder;
  const input = { tensor: new Float32Array(3 * h * w).map((_, i) => Math.sin(i)), batchSize: 1 };
  const timed = async (fn) => {
    const ms = [];
    for (let i = 0; i < 7; i++) {
      const t = performance.now();
      await fn();
      if (i >= 2) ms.push(performance.now() - t);
    }
    return median(ms);
  };
  const [forwardMs, forwardPeak] = await withPeakGpuMemory(() => timed(() => model.predict(input)));
  const [trainMs, trainPeak] = await withPeakGpuMemory(() => timed(() => model.trainStep(input, [1], { encoderLr: 1e-6, decoderLr: 1e-5 })));
  model.dispose();
  return { forwardMs, trainStepMs: trainMs, peakGpuMib: { forward: forwardPeak, train: trainPeak } };
}

function timeReference(preset, autocast) {
  const probe = spawnSync('python3', ['-c', `import torch, sys; sys.exit(0 if ${gpu === 'cpu' ? 'True' : 'torch.cuda.is_available()'} else 1)`]);
  if (probe.status !== 0) return { skipped: 'no CUDA-enabled PyTorch on this machine (python3 -c "import torch")' };
  const out = {};
  for (const kase of ['forward', 'train']) {
    const r = spawnSync('python3', [path.join(root, 'scripts/reference/bench_model.py'), '--case', kase, '--preset', preset, '--batch', '1', '--device', gpu === 'cpu' ? 'cpu' : 'cuda', '--autocast', autocast, '--iters', '5', '--warmup', '2'], { encoding: 'utf8' });
    if (r.status !== 0) return { skipped: `bench_model.py failed: ${r.stderr.trim().split('\n').pop()}` };
    out[kase] = JSON.parse(r.stdout.trim().split('\n').pop());
  }
  return out;
}

const report = { date: new Date().toISOString(), gpu: '', agreement: null, presets: {} };
try {
  report.gpu = execFileSync('nvidia-smi', ['--query-gpu=name,driver_version,memory.total', '--format=csv,noheader'], { encoding: 'utf8' }).trim();
} catch {
  report.gpu = 'nvidia-smi not available';
}
report.agreement = await agreement();
console.error(`CPU vs CUDA: ${JSON.stringify(report.agreement)}`);
for (const preset of presets) {
  const entry = { ours: await timeOurs(preset, 'f32'), reference: timeReference(preset, 'none') };
  if (gpu !== 'cpu') entry.bf16 = { ours: await timeOurs(preset, 'bf16'), reference: timeReference(preset, 'bf16') };
  report.presets[preset] = entry;
  console.error(`${preset}: ${JSON.stringify(entry)}`);
}
writeFileSync(outFile, JSON.stringify(report, null, 2) + '\n');
console.log(JSON.stringify(report));
if (!report.agreement.ok) process.exitCode = 1;
