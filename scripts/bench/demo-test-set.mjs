// The demo's data and test set as the accuracy benchmarks use them (bench:train-bf16,
// bench:precision): the demo's synthetic faces (`npm start`'s, drawn once into .cache/demo),
// a model's outputs on the test images as the test metrics see them (face crops), and the
// comparison of two models' outputs.
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';

import { root } from './common.mjs';

const { MotivNet } = await import(path.join(root, 'dist/index.js'));
const { synthesize } = await import(path.join(root, 'dist/synth/generate.js'));
const { DEMO_DATA, DEMO_TRAINING } = await import(path.join(root, 'dist/demo-recipe.js'));
const { batches } = await import(path.join(root, 'dist/preprocess/batcher.js'));
const { dataSource, readSet } = await import(path.join(root, 'dist/train/dataset.js'));

/** The demo's faces, drawn into .cache/demo unless already there with the same settings. */
export async function demoData() {
  const dir = path.join(root, '.cache', 'demo', `faces-seed${DEMO_DATA.seed}`);
  const marker = path.join(dir, 'synth.json');
  const wanted = JSON.stringify(DEMO_DATA);
  if (!(existsSync(marker) && readFileSync(marker, 'utf8') === wanted)) {
    console.log(`drawing the demo's faces into ${path.relative(root, dir)}`);
    await synthesize({ ...DEMO_DATA, out: dir });
    writeFileSync(marker, wanted);
  }
  return dir;
}

/** The test set's samples under the demo's settings (8 classes, faces cropped). */
export async function demoTestSet(data) {
  const settings = { data, format: 'affectnet', classes: 8, cropToFace: true };
  return (await readSet(dataSource(settings), 'test', settings)).samples;
}

/**
 * The logits and probabilities of every test image (face crops, as the test metrics see them)
 * under the demo's model with `weights`, loaded with `precision`, and the accuracy they give.
 */
export async function outputsOf(weights, testSet, pool, precision = 'f32') {
  const model = await MotivNet.load({ model: DEMO_TRAINING.model, weights, precision });
  const { inputWidth: minWidth, inputHeight: minHeight } = model.config.encoder;
  const rows = [];
  let correct = 0;
  for await (const batch of batches(testSet, { batchSize: 8, decode: (t) => pool.decode(t), minWidth, minHeight, maxPixels: 64 << 20 })) {
    const r = await model.evaluate(batch, batch.labels);
    for (let i = 0; i < batch.labels.length; i++) {
      const logits = r.logits.subarray(i * 8, i * 8 + 8);
      rows.push({ logits, probabilities: r.probabilities.subarray(i * 8, i * 8 + 8) });
      if (topOf(logits) === batch.labels[i]) correct++;
    }
  }
  model.dispose();
  rows.accuracy = correct / rows.length;
  return rows;
}

function topOf(values) {
  return values.indexOf(Math.max(...values));
}

/**
 * Top-1 agreement and the largest differences between two models' outputs on the same images,
 * with the largest logit of the first (the scale the differences are read against).
 */
export function compare(a, b) {
  let agree = 0;
  let logit = 0;
  let probability = 0;
  let largestLogit = 0;
  a.forEach((x, i) => {
    const y = b[i];
    if (topOf(x.logits) === topOf(y.logits)) agree++;
    for (let c = 0; c < x.logits.length; c++) {
      largestLogit = Math.max(largestLogit, Math.abs(x.logits[c]));
      logit = Math.max(logit, Math.abs(x.logits[c] - y.logits[c]));
      probability = Math.max(probability, Math.abs(x.probabilities[c] - y.probabilities[c]));
    }
  });
  return { images: a.length, top1Agreement: agree, maxLogitDiff: logit, maxProbabilityDiff: probability, largestLogit };
}
