// ONNX Runtime from Node (onnxruntime-node, as a Node backend would embed it) on the exported
// reference model: CPU provider, a fixed number of intra-op threads, all graph optimisations.
// Prints one JSON line with the median milliseconds and the resident memory before the
// session (the baseline) and at its peak. onnxruntime-node is installed for the benchmarks only,
// by scripts/bench/setup-peers, under .cache/bench/peers.
//   node scripts/bench/peers/ort.mjs MODEL.onnx THREADS ITERS [WARMUP]
import { createRequire } from 'node:module';
import path from 'node:path';

import { root } from '../common.mjs';

const require = createRequire(path.join(root, '.cache/bench/peers/package.json'));
const ort = require('onnxruntime-node');

const [file, threadsArg = '2', itersArg = '5', warmupArg = '1'] = process.argv.slice(2);
const baselineRssMb = process.memoryUsage().rss / 2 ** 20;
const session = await ort.InferenceSession.create(file, {
  intraOpNumThreads: Number(threadsArg),
  interOpNumThreads: 1,
  executionMode: 'sequential',
  graphOptimizationLevel: 'all',
});
const meta = session.inputMetadata?.[0];
const dims = meta?.shape ?? null;
if (!dims || dims.some((d) => typeof d !== 'number')) throw new Error(`${file}: expected a fixed input shape, got ${JSON.stringify(dims)}`);
const n = dims.reduce((a, b) => a * b, 1);
const data = new Float32Array(n);
for (let i = 0; i < n; i++) data[i] = Math.sin(i * 12.9898) * 1.5;
const feeds = { [session.inputNames[0]]: new ort.Tensor('float32', data, dims) };
for (let i = 0; i < Number(warmupArg); i++) await session.run(feeds);
const times = [];
for (let i = 0; i < Number(itersArg); i++) {
  const t = performance.now();
  await session.run(feeds);
  times.push(performance.now() - t);
}
times.sort((a, b) => a - b);
console.log(JSON.stringify({ engine: 'onnxruntime-node', version: ort.env.versions.node, threads: Number(threadsArg), ms: times[Math.floor(times.length / 2)], peakRssMb: process.resourceUsage().maxRSS / 1024, baselineRssMb }));
