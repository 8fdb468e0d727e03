// The release workflow's check of a freshly built addon on its own platform: load a model,
// predict, classify an encoded image through the decoding workers (which load the addon in a
// worker thread and hand their pixels back to the main thread), and print what ran where.
import sharp from 'sharp';

import { EmotionClassifier, MotivNet } from '../../dist/index.js';

const model = await MotivNet.load({ model: 'tiny', seed: 1 });
const { inputWidth: w, inputHeight: h } = model.config.encoder;
const r = await model.predict({ data: new Uint8Array(w * h * 3).fill(128), width: w, height: h });
const sum = r.probabilities.reduce((a, b) => a + b, 0);
if (Math.abs(sum - 1) > 1e-4) throw new Error(`probabilities sum to ${sum}`);
const classifier = await EmotionClassifier.create({ model });
const jpeg = await sharp({ create: { width: 160, height: 120, channels: 3, background: { r: 200, g: 150, b: 120 } } }).jpeg().toBuffer();
const c = await classifier.classify(jpeg);
await classifier.close();
console.log(`${process.platform} ${process.arch}, Node ${process.version}: predict ${r.top[0].label} (${r.top[0].probability.toFixed(3)}), classify ${c.label}`);
model.dispose();
