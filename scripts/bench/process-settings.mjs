// `npm run bench:process`: what the process-wide settings the library leaves to its host are
// worth (src/tune-process.ts). Each configuration runs in a fresh Node process, alternating,
// 3 rounds: a `tiny` train step at batch 8, a `small` forward at batch 1 (medians over the
// steps after a warm-up), the peak resident memory, and the decoding pool's images per second
// on 240 JPEGs. Writes the `process-settings` section of docs/BENCHMARKS.md and
// docs/benchmarks/process-settings.json.
//
//   library    what a host gets by default: nothing process-wide changed
//   candle     CANDLE_NUM_THREADS=1 in the environment
//   cli        CANDLE_NUM_THREADS=1 and tuneProcess(): what the `motivnet` command line runs with
import { spawnSync } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { machine, root, writeJson, writeSection } from './common.mjs';
import { benchJpegs, jpegDir } from './jpegs.mjs';

const CONFIGS = {
  library: { env: {}, tune: false },
  candle: { env: { CANDLE_NUM_THREADS: '1' }, tune: false },
  cli: { env: { CANDLE_NUM_THREADS: '1' }, tune: true },
};
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const IMAGES = 240;

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function child(tune) {
  const lib = await import(path.join(root, 'dist/index.js'));
  const { PreprocessPool } = await import(path.join(root, 'dist/preprocess/index.js'));
  if (tune) lib.tuneProcess();
  const measure = async (preset, batch, steps, step) => {
    const model = await lib.MotivNet.load({ model: preset, seed: 0 });
    const { inputWidth: w, inputHeight: h } = model.config.encoder;
    const images = Array.from({ length: batch }, (_, i) => ({ data: new Uint8Array(w * h * 3).fill(40 + i), width: w, height: h }));
    const times = [];
    for (let i = 0; i <= steps; i++) {
      const t = performance.now();
      await step(model, images);
      if (i > 0) times.push(performance.now() - t);
    }
    model.dispose();
    return median(times);
  };
  const trainMs = await measure('tiny', 8, 12, (m, images) => m.trainStep(images, images.map((_, i) => i % 8), { encoderLr: 1e-5, decoderLr: 1e-4 }));
  const forwardMs = await measure('small', 1, 10, (m, images) => m.predict(images));
  const files = (await import('node:fs')).readdirSync(jpegDir).filter((f) => f.endsWith('.jpg')).sort().slice(0, IMAGES).map((f) => path.join(jpegDir, f));
  const pool = new PreprocessPool();
  const t = performance.now();
  await Promise.all(files.map((p) => pool.decode({ path: p, minWidth: 1, minHeight: 1, maxPixels: 1e8 })));
  const decodePerS = files.length / ((performance.now() - t) / 1000);
  await pool.destroy();
  console.log(JSON.stringify({ trainMs, forwardMs, decodePerS, peakRssMb: process.resourceUsage().maxRSS / 1024 }));
}

if (process.argv[2] === '--child') {
  await child(process.argv[3] === 'tune');
} else {
  await benchJpegs(IMAGES);
  const results = Object.fromEntries(Object.keys(CONFIGS).map((k) => [k, []]));
  for (let round = 0; round < ROUNDS; round++) {
    for (const [name, config] of Object.entries(CONFIGS)) {
      const env = { ...process.env, ...config.env };
      if (!config.env.CANDLE_NUM_THREADS) delete env.CANDLE_NUM_THREADS;
      const r = spawnSync(process.execPath, [fileURLToPath(import.meta.url), '--child', config.tune ? 'tune' : 'none'], { encoding: 'utf8', env });
      if (r.status !== 0) throw new Error(`${name}: ${r.stderr}`);
      const line = JSON.parse(r.stdout.trim().split('\n').at(-1));
      results[name].push(line);
      console.log(`round ${round + 1} ${name}: ${JSON.stringify(line)}`);
    }
  }
  const summary = Object.fromEntries(
    Object.entries(results).map(([name, rs]) => [
      name,
      {
        trainMs: median(rs.map((r) => r.trainMs)),
        forwardMs: median(rs.map((r) => r.forwardMs)),
        decodePerS: median(rs.map((r) => r.decodePerS)),
        peakRssMb: median(rs.map((r) => r.peakRssMb)),
      },
    ]),
  );
  const date = new Date().toISOString().slice(0, 10);
  writeJson('process-settings', { date, machine: machine(), rounds: ROUNDS, summary, results });
  const row = (name, label) => {
    const s = summary[name];
    return `| ${label} | ${s.trainMs.toFixed(1)} | ${s.forwardMs.toFixed(1)} | ${s.decodePerS.toFixed(0)} | ${s.peakRssMb.toFixed(0)} |`;
  };
  writeSection(
    'process-settings',
    `## Process-wide settings

\`npm run bench:process\` — ${date}, ${machine()}. The library changes nothing process-wide in its
host (src/tune-process.ts); the \`motivnet\` command line sets \`CANDLE_NUM_THREADS=1\` and calls
\`tuneProcess()\` (glibc malloc thresholds, one libvips thread per operation, libvips' cache off)
for its own process. Each configuration in a fresh Node process, ${ROUNDS} alternating rounds, medians:
a \`tiny\` train step at batch 8, a \`small\` forward at batch 1, ${IMAGES} JPEGs (~400 px) through the
decoding pool (${os.availableParallelism()} workers), and the process's peak resident memory.

| configuration | tiny train step b8, ms | small forward b1, ms | decoded images/s | peak RSS, MB |
|---|---|---|---|---|
${row('library', "library defaults (a host's process, nothing changed)")}
${row('candle', '`CANDLE_NUM_THREADS=1` in the environment')}
${row('cli', '`CANDLE_NUM_THREADS=1` and `tuneProcess()` (the command line)')}`,
  );
}
