// The release workflow's check of a freshly built addon on its own platform: load a model,
// predict, and print what ran where.
import { MotivNet } from '../../dist/index.js';

const model = await MotivNet.load({ model: 'tiny', seed: 1 });
const { inputWidth: w, inputHeight: h } = model.config.encoder;
const r = await model.predict({ data: new Uint8Array(w * h * 3).fill(128), width: w, height: h });
const sum = r.probabilities.reduce((a, b) => a + b, 0);
if (Math.abs(sum - 1) > 1e-4) throw new Error(`probabilities sum to ${sum}`);
console.log(`${process.platform} ${process.arch}: ${r.top[0].label} (${r.top[0].probability.toFixed(3)})`);
model.dispose();
