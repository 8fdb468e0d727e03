/**
 * `npm start`: the embedded demo. Generates the procedural face data set once (cached in
 * .cache/demo), trains the demo-sized model on CPU with the reference's balanced sampling and
 * 9:1 split, evaluates on the test portion, and prints the metrics next to the paper's
 * AffectNet numbers, the run folder, and a `motivnet predict` line to try the model.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { DEMO_DATA, DEMO_TRAINING } from './demo-recipe.js';
import { plannedTotal, synthesize } from './synth/generate.js';
import { Progress } from './train/progress.js';
import { train } from './train/trainer.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const rel = (p: string) => path.relative(process.cwd(), p) || '.';

const PAPER = { accuracy: 0.5749, auroc: 0.9039, f1: 0.5741, precision: 0.5799, recall: 0.5749, loss: 1.148 };

async function demoData(): Promise<string> {
  const dir = path.join(root, '.cache', 'demo', `faces-seed${DEMO_DATA.seed}`);
  const marker = path.join(dir, 'synth.json');
  const wanted = JSON.stringify(DEMO_DATA);
  if (existsSync(marker) && readFileSync(marker, 'utf8') === wanted) {
    console.log(`data: ${rel(dir)} (cached)`);
    return dir;
  }
  const started = performance.now();
  const progress = new Progress({ label: 'generating faces', total: plannedTotal({ ...DEMO_DATA, out: dir }) });
  const r = await synthesize({ ...DEMO_DATA, out: dir }, (done) => progress.update(done, done, {}));
  progress.finish();
  writeFileSync(marker, wanted);
  console.log(`data: ${rel(dir)}: ${r.train.reduce((a, b) => a + b, 0)} training images (${r.train.join('/')} per class), ${r.test.reduce((a, b) => a + b, 0)} test, in ${((performance.now() - started) / 1000).toFixed(1)} s`);
  return dir;
}

async function main(): Promise<void> {
  const started = performance.now();
  console.log('motivnet demo: synthetic faces, 8 emotions, trained from scratch on this CPU\n');
  const data = await demoData();
  const stamp = new Date().toISOString().replace(/[-:]/g, '').replace(/\..*/, '').replace('T', '-');
  const out = path.join(root, 'runs', `demo-${stamp}`);
  const result = await train({ ...DEMO_TRAINING, data, out });
  const t = result.test!;
  const pct = (v: number) => `${(100 * v).toFixed(2)}%`.padStart(9);
  const row = (name: string, m: typeof PAPER) => `${name.padEnd(44)}${pct(m.accuracy)}${pct(m.auroc)}${pct(m.f1)}${pct(m.precision)}${pct(m.recall)}${m.loss.toFixed(3).padStart(8)}`;
  console.log(`\n${''.padEnd(44)} accuracy    AUROC       F1 precision   recall    loss`);
  console.log(row('this run: synthetic faces, test set', t));
  console.log(row('paper: MotivNet on AffectNet-8 (other data)', PAPER));
  console.log('(the paper\'s row is real photographs with Sapiens-1B; the demo\'s faces are drawn, so the rows are not comparable)');
  console.log(`\nrun folder: ${rel(out)} (curves.png, confusion.png, metrics.csv, summary.json, checkpoints/)`);
  console.log(`total time: ${((performance.now() - started) / 1000).toFixed(0)} s`);
  const sample = path.join(data, 'images', 'test', '00000.jpg');
  console.log(`\ntry it:\n  npx motivnet predict --weights ${rel(path.join(out, 'checkpoints', 'best.safetensors'))} --model ${rel(DEMO_TRAINING.model)} --input ${rel(sample)} --format table`);
}

await main();
