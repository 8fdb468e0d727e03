// `npm run bench:train-bf16`: what training in bf16 on the CPU (precision 'bf16' on a CPU with
// AVX512_BF16: the encoder's Linear products and attention in bf16, on AMX tiles where the CPU
// has them) costs in accuracy against f32.
// The demo's recipe on the demo's data (`npm start`'s, drawn once into .cache/demo), for
// seeds 0 and 1, once in each precision from the same initial weights and the same data order.
// Per seed: each run's test metrics and time, and the two trained models side by side on the
// test set as it is evaluated (face crops, both predicting in f32): top-1 agreement and the
// largest logit and probability differences. Beside them, the same comparison between the two
// f32 runs (seeds 0 and 1): how far two runs differ that only a seed tells apart. Results go to
// docs/BENCHMARKS.md and docs/benchmarks/train-bf16.json. Where the CPU has no AVX512_BF16 the script
// says so and stops.
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { machine, root, writeJson, writeSection } from './common.mjs';
import { compare, demoData, demoTestSet, outputsOf } from './demo-test-set.mjs';

const { cpuBf16Available } = await import(path.join(root, 'dist/index.js'));
const { train } = await import(path.join(root, 'dist/train/trainer.js'));
const { DEMO_TRAINING } = await import(path.join(root, 'dist/demo-recipe.js'));
const { PreprocessPool } = await import(path.join(root, 'dist/preprocess/index.js'));

if (!cpuBf16Available()) {
  console.log('this CPU has no AVX512_BF16 (or MOTIVNET_BF16=off): bf16 training does not run here, nothing to measure');
  process.exit(0);
}

const SEEDS = [0, 1];

const data = await demoData();
const testSet = await demoTestSet(data);
const work = mkdtempSync(path.join(os.tmpdir(), 'motivnet-train-bf16-'));
const quiet = { log: () => {}, progressStream: { write: () => true, isTTY: false } };
const pool = new PreprocessPool({ threads: 2 });

const results = [];
const f32Logits = [];
try {
  for (const seed of SEEDS) {
    const runs = {};
    for (const precision of ['f32', 'bf16']) {
      const out = path.join(work, `seed${seed}-${precision}`);
      const started = performance.now();
      const r = await train({ ...DEMO_TRAINING, data, out, seed, precision, threads: 2 }, quiet);
      const seconds = (performance.now() - started) / 1000;
      runs[precision] = { test: r.test, seconds, logits: await outputsOf(path.join(out, 'checkpoints', 'best.safetensors'), testSet, pool) };
      console.log(`seed ${seed}, ${precision}: test accuracy ${(100 * r.test.accuracy).toFixed(2)}%, loss ${r.test.loss.toFixed(4)}, ${seconds.toFixed(0)} s`);
    }
    f32Logits.push(runs.f32.logits);
    const pick = (m, seconds) => ({ accuracy: m.accuracy, auroc: m.auroc, f1: m.f1, loss: m.loss, seconds });
    const side = compare(runs.f32.logits, runs.bf16.logits);
    results.push({ seed, f32: pick(runs.f32.test, runs.f32.seconds), bf16: pick(runs.bf16.test, runs.bf16.seconds), ...side });
    console.log(`seed ${seed}: top-1 agreement ${side.top1Agreement}/${side.images}, largest logit difference ${side.maxLogitDiff.toFixed(3)}`);
  }
} finally {
  await pool.destroy();
  rmSync(work, { recursive: true, force: true });
}
const seeds = compare(f32Logits[0], f32Logits[1]);

const date = new Date().toISOString().slice(0, 10);
const pct = (v) => `${(100 * v).toFixed(2)}%`;
const row = (r) => `${r.top1Agreement} / ${r.images} | ${r.maxLogitDiff.toFixed(3)} | ${r.maxProbabilityDiff.toFixed(3)}`;
writeSection(
  'train-bf16',
  `## Training in bf16 on the CPU: what it costs in accuracy

\`npm run bench:train-bf16\` — ${date}, ${machine()}; 2 threads. The demo's recipe (\`npm start\`: configs/demo-model.json,
${DEMO_TRAINING.epochs} epochs, batch ${DEMO_TRAINING.batchSize}, the ViT init, faces cropped) on the demo's synthetic faces, once in f32 and once with
\`precision: 'bf16'\` (the encoder's Linear products and attention in bf16, on AMX tiles where the CPU has them; weights, gradients, optimizer,
softmax, LayerNorm, GELU and the head in f32), each seed from the same initial weights and data order. Test metrics of
each run's best checkpoint; then the two trained models on the ${testSet.length} test images as the test metrics see them (face
crops), both predicting in f32: top-1 agreement and the largest differences. The last row compares the two f32 runs
(seeds 0 and 1): how far apart two runs are that differ only in their seed.

| seed | f32: accuracy, AUROC, loss | bf16: accuracy, AUROC, loss | top-1 agreement | largest logit difference | largest probability difference | time f32 / bf16 |
|---|---|---|---|---|---|---|
${results.map((r) => `| ${r.seed} | ${pct(r.f32.accuracy)}, ${pct(r.f32.auroc)}, ${r.f32.loss.toFixed(4)} | ${pct(r.bf16.accuracy)}, ${pct(r.bf16.auroc)}, ${r.bf16.loss.toFixed(4)} | ${row(r)} | ${r.f32.seconds.toFixed(0)} / ${r.bf16.seconds.toFixed(0)} s |`).join('\n')}
| f32 seed 0 against f32 seed 1 | | | ${row(seeds)} | |
`,
);
writeJson('train-bf16', { date, machine: machine(), results, f32SeedToSeed: seeds });
