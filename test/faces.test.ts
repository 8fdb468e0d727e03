/**
 * Faces in whole photographs, through every door: `detectFaces`, `predict` and the classifier
 * with `faces: 'detect'`, `motivnet predict --faces detect` in its three formats, and
 * `POST /v1/predict?faces=detect`. The photographs come from scikit-image's samples
 * (scripts/detector/make_photo_fixtures.py writes test/fixtures/faces/, with MediaPipe's own
 * detections on them; test/fixtures/decode/ holds the astronaut at 2048 px and the coffee cup).
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import sharp from 'sharp';
import type { FastifyInstance } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { attentionMap, attentionOverlay } from '../src/explain.js';
import { detectFaces, type DetectedFace } from '../src/faces.js';
import { cropImage, type RgbImage } from '../src/images.js';
import { MotivNet } from '../src/model.js';
import { EmotionClassifier } from '../src/serve/classifier.js';
import { createServer } from '../src/serve/server.js';
import { createRng } from '../src/data/random.js';
import { cuesFor, faceBox, faceSvg, lookFor } from '../src/synth/faces.js';
import { tinyModelConfig } from './helpers/dataset.js';
import { tempDir } from './helpers/files.js';

const __dirname = path.dirname(fileURLToPath(import.meta.url));
const cli = path.resolve(__dirname, '../dist/cli.js');
const faces = path.join(__dirname, 'fixtures/faces');
const decode = path.join(__dirname, 'fixtures/decode');
const photo = {
  astronaut: path.join(decode, 'astronaut-2048.jpg'),
  coffee: path.join(decode, 'coffee-4000x2667.jpg'),
  group: path.join(faces, 'group.png'),
  camera: path.join(faces, 'camera.png'),
};
/** MediaPipe 0.10.14's detections on the fixture files: boxes as (left, top, right, bottom) fractions. */
const mediapipe = JSON.parse(readFileSync(path.join(faces, 'expected.json'), 'utf8')) as Record<string, { faces: { score: number; bbox: number[] }[] }>;

const dir = tempDir('faces');
const config = tinyModelConfig(dir, 0);
const weights = path.join(dir, 'weights.safetensors');
let model: MotivNet;

async function rgb(file: string | Buffer): Promise<RgbImage> {
  const { data, info } = await sharp(file).rotate().removeAlpha().toColourspace('srgb').raw().toBuffer({ resolveWithObject: true });
  return { data: new Uint8Array(data.buffer, data.byteOffset, data.length), width: info.width, height: info.height };
}

function iou(a: DetectedFace['box'], b: DetectedFace['box']): number {
  const w = Math.max(0, Math.min(a.x + a.width, b.x + b.width) - Math.max(a.x, b.x));
  const h = Math.max(0, Math.min(a.y + a.height, b.y + b.height) - Math.max(a.y, b.y));
  return (w * h) / (a.width * a.height + b.width * b.height - w * h);
}

/** MediaPipe's faces of a fixture as boxes in pixels. */
function expectedBoxes(name: string, width: number, height: number) {
  return mediapipe[name]!.faces.map((f) => {
    const [l, t, r, b] = f.bbox as [number, number, number, number];
    return { score: f.score, box: { x: l * width, y: t * height, width: (r - l) * width, height: (b - t) * height } };
  });
}

function sameAsMediapipe(found: DetectedFace[], name: string, width: number, height: number): void {
  const expected = expectedBoxes(name, width, height);
  expect(found.length).toBe(expected.length);
  found.forEach((f, i) => {
    expect(iou(f.box, expected[i]!.box)).toBeGreaterThanOrEqual(0.95);
    expect(Math.abs(f.score - expected[i]!.score)).toBeLessThanOrEqual(1e-3);
  });
}

beforeAll(async () => {
  model = await MotivNet.load({ model: config, seed: 5 });
  await model.save(weights);
});

afterAll(() => model.dispose());

describe('detectFaces', () => {
  it('finds what MediaPipe finds: several faces, a greyscale photo, none on a coffee cup', async () => {
    const [group, camera, coffee] = await Promise.all([rgb(photo.group), rgb(photo.camera), rgb(photo.coffee)]);
    const [g, c, none] = await detectFaces([group, camera, coffee]);
    expect(g!.length).toBeGreaterThanOrEqual(3);
    sameAsMediapipe(g!, 'group', group.width, group.height);
    sameAsMediapipe(c!, 'camera', camera.width, camera.height);
    expect(none).toEqual([]);
    // Best first, keypoints inside the face's crop, the crop inside the image.
    expect(g!.map((f) => f.score)).toEqual([...g!.map((f) => f.score)].sort((a, b) => b - a));
    for (const f of g!) {
      const [x, y] = f.keypoints.noseTip;
      expect(x).toBeGreaterThan(f.crop.x);
      expect(x).toBeLessThan(f.crop.x + f.crop.width);
      expect(y).toBeGreaterThan(f.crop.y);
      expect(f.crop.x + f.crop.width).toBeLessThanOrEqual(group.width);
    }
  });

  it("finds each of the demo's synthetic faces once, inside the face drawn", async () => {
    const rng = createRng(1, 0, 0);
    const [width, height] = [320, 240];
    for (let i = 0; i < 16; i++) {
      const look = lookFor(rng, width, height);
      const svg = faceSvg(cuesFor(i % 8, rng), look, width, height);
      const found = (await detectFaces(await rgb(Buffer.from(svg))))[0]!;
      expect(found.length, `face ${i}`).toBe(1);
      const drawn = faceBox(look, width, height);
      const { x, y, width: w, height: h } = found[0]!.box;
      expect(x + w / 2).toBeGreaterThan(drawn.x);
      expect(x + w / 2).toBeLessThan(drawn.x + drawn.width);
      expect(y + h / 2).toBeGreaterThan(drawn.y);
      expect(y + h / 2).toBeLessThan(drawn.y + drawn.height);
      expect(w).toBeGreaterThan(0.5 * drawn.width);
      expect(w).toBeLessThan(1.2 * drawn.width);
    }
  });

  it('widens the crop by the margin, and keeps faces above minScore, at most maxFaces', async () => {
    const group = await rgb(photo.group);
    const [tight] = await detectFaces(group, { margin: 0 });
    const [wide] = await detectFaces(group, { margin: 0.5 });
    expect(wide![0]!.crop.width).toBeGreaterThan(tight![0]!.crop.width * 1.5);
    expect(tight![0]!.crop.width).toBeCloseTo(Math.max(tight![0]!.box.width, tight![0]!.box.height), -0.5);
    const [few] = await detectFaces(group, { maxFaces: 2 });
    expect(few!.length).toBe(2);
    const [sure] = await detectFaces(group, { minScore: 0.86 });
    expect(sure!.every((f) => f.score >= 0.86)).toBe(true);
    expect(sure!.length).toBeLessThan(tight!.length);
    await expect(detectFaces(group, { margin: -1 })).rejects.toThrow(/margin/);
  });

  it('finds a small face in a large frame with smallFaces, and levels a turned face with upright', async () => {
    const face = await sharp(photo.astronaut).resize(256, 256).toBuffer();
    const frame = await rgb(
      await sharp({ create: { width: 1280, height: 720, channels: 3, background: { r: 128, g: 128, b: 128 } } })
        .composite([{ input: face, left: 900, top: 400 }])
        .png()
        .toBuffer(),
    );
    expect((await detectFaces(frame))[0]).toEqual([]);
    const [small] = await detectFaces(frame, { smallFaces: true });
    expect(small!.length).toBe(1);
    const { x, y, width } = small![0]!.box;
    expect(x).toBeGreaterThan(900);
    expect(y).toBeGreaterThan(400);
    expect(x + width).toBeLessThan(900 + 256);
    // Tiles are more chances at a false face (a collar, at 0.64): a tile's faces need 0.75.
    const cover = await rgb(await sharp(photo.astronaut).resize(1920, 1080, { fit: 'cover' }).png().toBuffer());
    const [whole, tiled] = [(await detectFaces(cover))[0]!, (await detectFaces(cover, { smallFaces: true }))[0]!];
    expect(tiled.length).toBe(whole.length);

    // Turned 30 degrees clockwise as seen: the crop turns back by about that much.
    const turned = await rgb(await sharp(photo.astronaut).resize(512, 512).rotate(-30, { background: '#000' }).png().toBuffer());
    const [plain] = await detectFaces(turned);
    expect(plain![0]!.angle).toBe(0);
    const [level] = await detectFaces(turned, { upright: true });
    expect(Math.abs(Math.abs(level![0]!.angle) - 30)).toBeLessThan(4);
  });
});

describe("predict with faces: 'detect'", () => {
  it('classifies each face as its crop would be classified, all faces in one call', async () => {
    const [group, coffee, astronaut] = await Promise.all([rgb(photo.group), rgb(photo.coffee), rgb(photo.astronaut)]);
    const r = await model.predict([group, coffee, astronaut], { faces: 'detect' });
    expect(r.faces.map((f) => f.length)).toEqual([mediapipe.group!.faces.length, 0, 1]);
    expect(r.batchSize).toBe(mediapipe.group!.faces.length + 1);
    const crops = [...r.faces[0]!.map((f) => cropImage(group, f.crop)), cropImage(astronaut, r.faces[2]![0]!.crop)];
    const direct = await model.predict(crops, { geometry: 'letterbox' });
    for (let i = 0; i < direct.logits.length; i++) expect(Math.abs(r.logits[i]! - direct.logits[i]!)).toBeLessThan(1e-5);
    const first = r.faces[0]![0]!;
    expect(first.label).toBe(direct.top[0]!.label);
    expect(first.probabilities[first.label]).toBeCloseTo(direct.top[0]!.probability, 5);
  });

  it('gives [] per image when no image has a face, and crops to a given box', async () => {
    const coffee = await rgb(photo.coffee);
    const none = await model.predict(coffee, { faces: 'detect' });
    expect(none.faces).toEqual([[]]);
    expect(none.batchSize).toBe(0);
    const box = { x: 100, y: 50, width: 400, height: 300 };
    const boxed = await model.predict(coffee, { faces: box });
    const direct = await model.predict(cropImage(coffee, box));
    expect(Array.from(boxed.logits)).toEqual(Array.from(direct.logits));
    await expect(model.predict(coffee, { faces: 'everything' as 'detect' })).rejects.toThrow(/faces must be/);
    await expect(model.predict({ tensor: new Float32Array(3 * 64 * 48), batchSize: 1 }, { faces: 'detect' })).rejects.toThrow(/needs pixels/);
  });
});

describe("EmotionClassifier with faces: 'detect'", () => {
  let classifier: EmotionClassifier;
  beforeAll(async () => {
    classifier = await EmotionClassifier.create({ model, maxBatchSize: 2, maxWaitMs: 20, decodeThreads: 2 });
  });
  afterAll(() => classifier.close());

  it('answers each face of a photo, in upright pixels, together, as predict does', async () => {
    const bytes = readFileSync(photo.group);
    const calls = classifier.stats().modelCalls;
    const r = await classifier.classify(bytes, { faces: 'detect' });
    // Three faces, past maxBatchSize 2: one batch, in two model calls of at most 2.
    expect(classifier.stats().modelCalls).toBe(calls + 2);
    expect(r.width).toBe(480);
    sameAsMediapipe(r.faces, 'group', r.width, r.height);
    const direct = await model.predict(await rgb(photo.group), { faces: 'detect' });
    r.faces.forEach((f, i) => {
      expect(f.label).toBe(direct.faces[0]![i]!.label);
      expect(f.probabilities[f.label]).toBeCloseTo(direct.faces[0]![i]!.probabilities[f.label]!, 5);
    });
    // EXIF orientation 6 (turn a quarter clockwise to view): boxes are in the upright image.
    const turned = await sharp(await sharp(photo.group).rotate(-90).jpeg({ quality: 95 }).toBuffer()).withMetadata({ orientation: 6 }).jpeg({ quality: 95 }).toBuffer();
    const upright = await classifier.classify(turned, { faces: 'detect' });
    expect([upright.width, upright.height]).toEqual([480, 320]);
    expect(upright.faces.length).toBeGreaterThanOrEqual(2);
    expect(iou(upright.faces[0]!.box, r.faces[0]!.box)).toBeGreaterThan(0.8);
  });

  it('counts each face against maxQueue, and never sends the model more than maxBatchSize', async () => {
    const tight = await EmotionClassifier.create({ model, maxBatchSize: 2, maxQueue: 2, decodeThreads: 1 });
    try {
      // Three faces: more than the two images this classifier holds at once.
      await expect(tight.classify(photo.group, { faces: 'detect' })).rejects.toMatchObject({ status: 413 });
      const sizes: number[] = [];
      const stop = classifier.observe({ batch: (size) => sizes.push(size) });
      await classifier.classify(photo.group, { faces: 'detect' });
      stop();
      expect(sizes).toEqual([2, 1]); // each model call observed: the request's three faces, two at a time
    } finally {
      await tight.close();
    }
  });

  it('answers a photo without a face with no faces, and refuses a bad faces option', async () => {
    const r = await classifier.classify(photo.coffee, { faces: 'detect' });
    expect(r).toEqual({ faces: [], width: 4000, height: 2667 });
    await expect(classifier.classify(photo.coffee, { faces: { x: -1, y: 0, width: 5, height: 5 } })).rejects.toThrow(/face box/);
    await expect(classifier.classify(photo.coffee, { faces: 'detect', detection: { maxFaces: 0 } })).rejects.toMatchObject({ status: 400, message: expect.stringMatching(/maxFaces/) });
    await expect(classifier.classify(photo.coffee, { faces: 'detect', detection: { maxFaces: -1 } })).rejects.toMatchObject({ status: 400 });
    await expect(classifier.classify(photo.coffee, { faces: 'detect', detection: { minScore: 0.3 } })).rejects.toThrow(/0\.5/);
    // A box that starts past the image is refused, not cut down to its last pixel.
    await expect(classifier.classify(photo.camera, { faces: { x: 1000, y: 0, width: 5, height: 5 } })).rejects.toMatchObject({ status: 400, message: expect.stringMatching(/outside/) });
    expect(() => cropImage({ data: new Uint8Array(12), width: 2, height: 2 }, { x: 5, y: 0, width: 1, height: 1 })).toThrow(/outside/);
    await expect(EmotionClassifier.create({ model, detection: { margin: 9 } })).rejects.toThrow(/margin/);
  });
});

describe('motivnet predict --faces detect', () => {
  const run = (...args: string[]) =>
    spawnSync(process.execPath, [cli, 'predict', '--model', config, '--weights', weights, '--faces', 'detect', '--input', photo.group, photo.coffee, ...args], { encoding: 'utf8', timeout: 120_000 });

  it('writes one JSON line per image with its faces, one CSV row per face, and a table', () => {
    const jsonl = run('--format', 'jsonl');
    expect(jsonl.status).toBe(0);
    const records = jsonl.stdout.trim().split('\n').map((l) => JSON.parse(l) as { file: string; width: number; faces: { box: object; score: number; label: string; index: number; probabilities: Record<string, number> }[] });
    expect(records.map((r) => r.faces.length)).toEqual([mediapipe.group!.faces.length, 0]);
    expect(records[0]!.width).toBe(480);
    expect(Object.keys(records[0]!.faces[0]!.probabilities)).toEqual([...model.labels]);
    expect(records[0]!.faces[0]!.label).toBe(model.labels[records[0]!.faces[0]!.index]);

    const csv = run('--format', 'csv');
    const rows = csv.stdout.trim().split('\n');
    expect(rows[0]).toBe(['file', 'face', 'x', 'y', 'width', 'height', 'score', 'label', ...model.labels].join(','));
    expect(rows.length).toBe(1 + mediapipe.group!.faces.length + 1); // a row per face, and the face-less file's row
    expect(rows[1]!.split(',')[1]).toBe('1');
    expect(Number(rows[1]!.split(',')[2])).toBeCloseTo(10.1, 1); // a number, not text
    expect(rows.at(-1)!.split(',').slice(1).every((v) => v === '')).toBe(true);

    const table = run('--format', 'table');
    expect(table.stdout).toMatch(/group\.png {2}face 1 at \d+,\d+ \d+x\d+ {2}\w+ \d+\.\d%/);
    expect(table.stdout).toMatch(/coffee-4000x2667\.jpg {2}no face found/);
  });

  it('refuses --faces with a malformed box, and detect with --resize none', () => {
    expect(run('--faces', '1,2,3').stderr).toMatch(/whole, detect, or a box/);
    expect(run('--resize', 'none').stderr).toMatch(/letterbox or stretch, not none/);
  });
});

describe('POST /v1/predict?faces=detect', () => {
  let classifier: EmotionClassifier;
  let app: FastifyInstance;
  let base: string;
  beforeAll(async () => {
    classifier = await EmotionClassifier.create({ model, decodeThreads: 2 });
    app = await createServer(classifier, { modelName: 'faces' });
    base = await app.listen({ port: 0, host: '127.0.0.1' });
  });
  afterAll(async () => {
    await app.close();
    await classifier.close();
  });

  const post = (query: string, body: Buffer) => fetch(`${base}/v1/predict${query}`, { method: 'POST', headers: { 'content-type': 'image/png' }, body });

  it('answers every face with its box, score, label, index and probabilities', async () => {
    const res = await post('?faces=detect', readFileSync(photo.group));
    expect(res.status).toBe(200);
    const body = (await res.json()) as { faces: { box: DetectedFace['box']; score: number; label: string; index: number; probabilities: object }[]; width: number; height: number; model: string };
    expect(body.model).toBe('faces');
    expect([body.width, body.height]).toEqual([480, 320]);
    expect(Object.keys(body.faces[0]!).sort()).toEqual(['box', 'index', 'label', 'probabilities', 'score']);
    sameAsMediapipe(body.faces as unknown as DetectedFace[], 'group', 480, 320);
    const whole = (await (await post('', readFileSync(photo.group))).json()) as { label: string; faces?: unknown };
    expect(whole.faces).toBeUndefined();
    expect(model.labels).toContain(whole.label);
  });

  it('refuses an unknown faces value, and faces with box', async () => {
    const bad = await post('?faces=all', readFileSync(photo.camera));
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as { message: string }).message).toMatch(/faces must be whole, detect or a box/);
    expect((await post('?faces=detect&box=1,1,5,5', readFileSync(photo.camera))).status).toBe(400);
    const boxed = await post('?faces=10,10,100,100', readFileSync(photo.camera));
    expect(boxed.status).toBe(200);
    const few = (await (await post('?faces=detect&maxFaces=2&upright=true', readFileSync(photo.group))).json()) as { faces: unknown[] };
    expect(few.faces.length).toBe(2);
    const badScore = await post('?faces=detect&minScore=0.2', readFileSync(photo.group));
    expect(badScore.status).toBe(400);
    expect(((await badScore.json()) as { message: string }).message).toMatch(/minScore/);
    expect((await post('?faces=detect&upright=maybe', readFileSync(photo.group))).status).toBe(400);
  });
});

describe('where the model looks', () => {
  it('returns each class map over the grid, summing to 1, beside the same logits', async () => {
    const astronaut = await rgb(photo.astronaut);
    const plain = await model.predict(astronaut);
    const r = await model.predict(astronaut, { explain: true });
    expect(Array.from(r.logits)).toEqual(Array.from(plain.logits));
    const a = r.attention!;
    expect([a.numClasses, a.gridHeight, a.gridWidth]).toEqual([8, 4, 3]);
    expect(a.values.length).toBe(8 * 4 * 3);
    for (let c = 0; c < 8; c++) expect(attentionMap(a, 0, c).reduce((s, v) => s + v, 0)).toBeCloseTo(1, 5);
    expect(plain.attention).toBeUndefined();
    const faces = await model.predict([await rgb(photo.group), astronaut], { faces: 'detect', explain: true });
    expect(faces.attention!.values.length).toBe(faces.batchSize * 8 * 4 * 3);
  });

  it('lays a map on the image where its cell is, undoing letterbox and stretch', async () => {
    const maps = { values: new Float32Array(12), numClasses: 1, gridHeight: 4, gridWidth: 3, patchSize: 16, patchPadding: 2, inputWidth: 48, inputHeight: 64 };
    maps.values[1 * 3 + 2] = 1; // row 1, column 2: input pixels x 30..46, y 14..30
    const brightest = async (image: RgbImage, geometry: 'letterbox' | 'stretch') => {
      const png = await attentionOverlay(image, attentionMap(maps, 0, 0), maps, { geometry });
      const { data, info } = await sharp(png).raw().toBuffer({ resolveWithObject: true });
      let best = 0;
      for (let p = 1; p < info.width * info.height; p++) if (data[3 * p]! + data[3 * p + 1]! > data[3 * best]! + data[3 * best + 1]!) best = p;
      return [best % info.width, Math.floor(best / info.width), info.width, info.height];
    };
    const black = (width: number, height: number): RgbImage => ({ data: new Uint8Array(width * height * 3), width, height });
    const [x, y, w, h] = await brightest(black(48, 64), 'stretch');
    expect([w, h]).toEqual([48, 64]);
    expect(x).toBeGreaterThanOrEqual(30);
    expect(y).toBeGreaterThanOrEqual(14);
    expect(y).toBeLessThan(30);
    // Letterbox: the image fills input rows 8..56, so input row 14..30 is image row 6..22 (of 48),
    // at twice the size for a 96 x 96 image.
    const [lx, ly] = await brightest(black(96, 96), 'letterbox');
    expect(lx).toBeGreaterThanOrEqual(60);
    expect(ly).toBeGreaterThanOrEqual(12);
    expect(ly).toBeLessThan(44);
  });

  it('motivnet predict --explain writes an overlay per face, named in its record', () => {
    const out = path.join(dir, 'explain');
    const r = spawnSync(process.execPath, [cli, 'predict', '--model', config, '--weights', weights, '--faces', 'detect', '--input', photo.group, '--explain', out], { encoding: 'utf8', timeout: 120_000 });
    expect(r.status).toBe(0);
    const record = JSON.parse(r.stdout.trim()) as { faces: { label: string; overlay: string }[] };
    expect(record.faces.length).toBe(mediapipe.group!.faces.length);
    for (const [i, f] of record.faces.entries()) {
      expect(path.basename(f.overlay)).toMatch(new RegExp(`group\\.png\\.face${i + 1}\\.${f.label}\\.png$`));
      expect(readFileSync(f.overlay).subarray(1, 4).toString()).toBe('PNG');
    }
  });
});

describe('measuring the crop margin of a folder of face crops', () => {
  it('finds the margin the crops were made with', async () => {
    // Crops of the astronaut and the group's faces at a margin of 0.4, as a data set's folder.
    const folder = path.join(dir, 'crops');
    mkdirSync(path.join(folder, 'sub'), { recursive: true });
    const sources = [await rgb(photo.astronaut), await rgb(photo.group)];
    let n = 0;
    for (const image of sources) {
      for (const face of (await detectFaces(image, { margin: 0.4 }))[0]!) {
        const c = face.crop;
        // Whole squares only: a crop cut by the photograph's edge is not 0.4 on every side.
        if (c.width !== c.height || c.x === 0 || c.y === 0) continue;
        const crop = cropImage(image, c);
        await sharp(crop.data, { raw: { width: crop.width, height: crop.height, channels: 3 } }).png().toFile(path.join(folder, n % 2 ? 'sub' : '', `${n++}.png`));
      }
    }
    expect(n).toBeGreaterThanOrEqual(2);
    const r = spawnSync(process.execPath, [path.resolve(__dirname, '../scripts/detector/measure-crop-margin.mjs'), folder], { encoding: 'utf8', timeout: 60_000 });
    expect(r.status, r.stderr).toBe(0);
    const report = JSON.parse(r.stdout) as { measured: number; margin: { median: number }; boxCentre: { x: { median: number } } };
    expect(report.measured).toBe(n);
    expect(Math.abs(report.margin.median - 0.4)).toBeLessThan(0.05);
    expect(Math.abs(report.boxCentre.x.median - 0.5)).toBeLessThan(0.05);
  });
});
