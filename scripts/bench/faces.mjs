// `npm run bench:faces`: the face detector and the classifier with `faces: 'detect'` (not run
// in CI).
//
// 1. Detection on one 1920 x 1080 photograph (scikit-image's astronaut, fitted to the frame), on
//    one thread as a decoding worker runs it: the detector alone, and with each face's crop
//    resized to the model's input (tiny's and sapiens' sizes), and with `upright` and
//    `smallFaces`. Median, min and max of 50 calls (20 and 10 for the last two).
// 2. The classifier's throughput on `tiny` (random weights) with `faces: 'whole'` beside
//    `faces: 'detect'`, on the same photographs (the astronaut frame, one face; the test group
//    photo enlarged to 960 x 640, three faces), 8 requests in flight, alternating rounds.
// Writes the `faces` section of docs/BENCHMARKS.md and docs/benchmarks/faces.json.
//
//   BENCH_REQUESTS  requests per round and mode (default 200)
//   BENCH_ROUNDS    alternating rounds (default 3)
import { readFileSync } from 'node:fs';
import path from 'node:path';

import sharp from 'sharp';

import { machine, root, writeJson, writeSection } from './common.mjs';

const requests = Number(process.env.BENCH_REQUESTS ?? 200);
const rounds = Number(process.env.BENCH_ROUNDS ?? 3);
const concurrency = 8;

const { MotivNet, EmotionClassifier } = await import(path.join(root, 'dist/index.js'));
const { native } = await import(path.join(root, 'dist/native.js'));

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const stats = (xs) => ({ median: median(xs), min: Math.min(...xs), max: Math.max(...xs) });
const fmt = (s, digits = 1) => `${s.median.toFixed(digits)} (${s.min.toFixed(digits)}-${s.max.toFixed(digits)})`;

const astronaut = path.join(root, 'test/fixtures/decode/astronaut-2048.jpg');
// The whole photograph in the frame, on grey: a face the whole frame's pass finds (at 0.56).
const frame = await sharp(astronaut).resize(1920, 1080, { fit: 'contain', background: '#808080' }).removeAlpha().jpeg({ quality: 92 }).toBuffer();
const group = await sharp(path.join(root, 'test/fixtures/faces/group.png')).resize(960, 640, { kernel: 'nearest' }).jpeg({ quality: 92 }).toBuffer();
const { data: framePixels } = await sharp(frame).raw().toBuffer({ resolveWithObject: true });

/** Tiles of half the shorter side spread over each side overlapping by a quarter (detector/tiles.rs). */
function tilesOf(width, height) {
  const side = Math.max(128, Math.floor(Math.min(width, height) / 2));
  const per = (length) => (length <= side ? 1 : Math.ceil((length - side) / (side - Math.floor(side / 4))) + 1);
  return per(width) * per(height);
}

// 1. Detection on this thread.
function timeDetect(options, iters = 50) {
  for (let i = 0; i < 5; i++) native.detectFacesSync(framePixels, 1920, 1080, options);
  const ms = [];
  let faces = 0;
  for (let i = 0; i < iters; i++) {
    const t = performance.now();
    faces = native.detectFacesSync(framePixels, 1920, 1080, options).faces.length;
    ms.push(performance.now() - t);
  }
  return { ...stats(ms), faces };
}
const detection = {
  detector: timeDetect({}),
  cropsTiny: timeDetect({ cropWidth: 192, cropHeight: 256 }),
  cropsSapiens: timeDetect({ cropWidth: 768, cropHeight: 1024 }),
  upright: timeDetect({ upright: true }, 20),
  smallFaces: timeDetect({ smallFaces: true }, 10),
};
for (const [k, v] of Object.entries(detection)) console.log(`detect ${k}: ${fmt(v, 2)} ms, ${v.faces} face(s)`);

// 2. Classifier throughput, whole against detect, alternating.
const model = await MotivNet.load({ model: 'tiny', seed: 0 });
const classifier = await EmotionClassifier.create({ model });
await classifier.warmUp();

async function run(bytes, faces) {
  let next = 0;
  let found = 0;
  const started = performance.now();
  const worker = async () => {
    while (next < requests) {
      next++;
      const r = await classifier.classify(bytes, { faces });
      found += faces === 'detect' ? r.faces.length : 1;
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  const seconds = (performance.now() - started) / 1000;
  return { imagesPerSecond: requests / seconds, facesPerSecond: found / seconds };
}

const photos = { 'astronaut 1920 x 1080 (1 face)': frame, 'group 960 x 640 (3 faces)': group };
const throughput = {};
for (const [name, bytes] of Object.entries(photos)) {
  const runs = { whole: [], detect: [] };
  await run(bytes, 'whole'); // warm the workers on this photograph
  for (let r = 0; r < rounds; r++) {
    for (const mode of ['whole', 'detect']) runs[mode].push(await run(bytes, mode));
  }
  throughput[name] = Object.fromEntries(
    Object.entries(runs).map(([mode, rs]) => [mode, { imagesPerSecond: stats(rs.map((x) => x.imagesPerSecond)), facesPerSecond: stats(rs.map((x) => x.facesPerSecond)) }]),
  );
  for (const mode of ['whole', 'detect']) {
    const t = throughput[name][mode];
    console.log(`${name} ${mode}: ${fmt(t.imagesPerSecond)} images/s, ${fmt(t.facesPerSecond)} faces/s`);
  }
}
await classifier.close();
model.dispose();

const date = new Date().toISOString().slice(0, 10);
const version = JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8')).version;
writeJson('faces', { date, machine: machine(), version, requests, rounds, concurrency, detection, throughput });
const rows = Object.entries(throughput).flatMap(([name, t]) => [
  `| ${name} | whole | ${fmt(t.whole.imagesPerSecond)} | ${fmt(t.whole.facesPerSecond)} |`,
  `| ${name} | detect | ${fmt(t.detect.imagesPerSecond)} | ${fmt(t.detect.facesPerSecond)} |`,
]);
writeSection(
  'faces',
  `
## Faces: detection, and the classifier with \`faces: 'detect'\` (\`npm run bench:faces\`)

${date}, ${machine()}.

Detection on one 1920 x 1080 photograph (scikit-image's astronaut fitted to the frame), on one
thread as a decoding worker runs it; median (min-max) of 50 calls, in ms. The budget is 10 ms.

| | ms |
|---|---|
| detector (warp, network, decoding, suppression) | ${fmt(detection.detector, 2)} |
| and the face's crop resized to tiny's input (192 x 256) | ${fmt(detection.cropsTiny, 2)} |
| and the face's crop resized to sapiens' input (768 x 1024) | ${fmt(detection.cropsSapiens, 2)} |
| \`upright\` (two more detector passes a face) | ${fmt(detection.upright, 2)} |
| \`smallFaces\` (the whole frame and ${tilesOf(1920, 1080)} tiles) | ${fmt(detection.smallFaces, 2)} |

The classifier on \`tiny\` (random weights; the default decoding workers, one per core), ${requests}
requests per round and mode with ${concurrency} in flight, ${rounds} alternating rounds; median
(min-max). With \`detect\`, each request's faces are found and cropped in the decoding worker and
go to the model together; faces/s counts classified faces.

| photograph | `faces` | images/s | faces/s |
|---|---|---|---|
${rows.join('\n')}
`,
);
console.log('wrote docs/BENCHMARKS.md (faces) and docs/benchmarks/faces.json');
