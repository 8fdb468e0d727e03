import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { afterAll, describe, expect, it } from 'vitest';

import type { Sample } from '../src/data/index.js';
import { toInputTensor } from '../src/index.js';
import { batches, PreprocessPool, SkipLog, type DecodeTask } from '../src/preprocess/index.js';
import { solid, tempDir, writeImage, writeText, type Rgb } from './helpers/files.js';

const MEAN = [123.5, 116.5, 103.5];
const STD = [58.5, 57.0, 57.5];
const norm = (v: number, c: number) => (v - MEAN[c]!) / STD[c]!;

const pool = new PreprocessPool({ threads: 2 });
afterAll(() => pool.destroy());
const dir = tempDir('preprocess');
const task = (file: string, extra: Partial<DecodeTask> = {}): DecodeTask => ({ path: file, minWidth: 48, minHeight: 64, maxPixels: 10_000_000, ...extra });

describe('the sharp worker pool', () => {
  it("loads its worker through a CommonJS entry: piscina's require() never reaches an ES module", async () => {
    // Node's require(esm) path once aborted a test process with a native assertion. With it
    // turned off, require() of an ES module throws, so only a CommonJS entry decodes here.
    const img = await writeImage(path.join(dir, 'entry.png'), solid(30, 20, [10, 200, 30]), 30, 20);
    const run = async (file: string) => {
      const code = `
        const { parentPort, workerData } = require('node:worker_threads');
        const { valueSymbol } = require('piscina');
        try {
          const decode = require(workerData.file);
          Promise.resolve(decode(workerData.task)).then(
            (r) => { const v = r[valueSymbol] ?? r; parentPort.postMessage({ ok: v.ok, width: v.width, height: v.height }); },
            (e) => parentPort.postMessage({ error: String(e.code ?? e) }));
        } catch (e) { parentPort.postMessage({ error: String(e.code ?? e) }); }`;
      const worker = new Worker(code, { eval: true, workerData: { file, task: task(img) }, execArgv: ['--no-experimental-require-module'] });
      const [message] = await once(worker, 'message');
      await worker.terminate();
      return message;
    };
    expect(await run(path.resolve('dist/preprocess/worker.js'))).toEqual({ error: 'ERR_REQUIRE_ESM' });
    expect(await run(path.resolve('dist/preprocess/worker-entry.cjs'))).toEqual({ ok: true, width: 30, height: 20 });
  });

  it('decodes to RGB with the size, applies EXIF orientation, crops, flips, and shrinks large images only when asked', async () => {
    const red: Rgb = [255, 0, 0];
    const img = await writeImage(path.join(dir, 'a.png'), solid(40, 20, [0, 0, 255], { x: 0, y: 0, size: 10, colour: red }), 40, 20);
    const plain = await pool.decode(task(img));
    expect(plain).toMatchObject({ ok: true, width: 40, height: 20 });
    if (!plain.ok) throw new Error(plain.reason);
    expect(plain.data.length).toBe(40 * 20 * 3);
    expect(Array.from(plain.data.subarray(0, 3))).toEqual(red);

    const flipped = await pool.decode(task(img, { flip: true }));
    if (!flipped.ok) throw new Error(flipped.reason);
    expect(Array.from(flipped.data.subarray(39 * 3, 40 * 3))).toEqual(red); // top-right now

    const cropped = await pool.decode(task(img, { box: { x: 5, y: 5, width: 10, height: 10 } }));
    expect(cropped).toMatchObject({ ok: true, width: 10, height: 10 });

    const turned = await writeImage(path.join(dir, 'turned.jpg'), solid(40, 20, [0, 200, 0]), 40, 20, 'jpeg', 6);
    expect(await pool.decode(task(turned))).toMatchObject({ ok: true, width: 20, height: 40 });

    // Full size by default (the core resizes, as the reference does); shrunk only on request.
    const big = await writeImage(path.join(dir, 'big.jpg'), solid(600, 800, [90, 90, 90]), 600, 800, 'jpeg');
    expect(await pool.decode(task(big, { minWidth: 96, minHeight: 128 }))).toMatchObject({ ok: true, width: 600, height: 800 });
    const shrunk = await pool.decode(task(big, { minWidth: 96, minHeight: 128, fastDecode: true }));
    if (!shrunk.ok) throw new Error(shrunk.reason);
    expect(shrunk.width).toBeGreaterThanOrEqual(96);
    expect(shrunk.height).toBeGreaterThanOrEqual(128);
    expect(shrunk.width).toBeLessThan(600);

    const grey = path.join(dir, 'grey.png');
    await (await import('sharp')).default(Buffer.alloc(48, 77), { raw: { width: 8, height: 6, channels: 1 } }).png().toFile(grey);
    const g = await pool.decode(task(grey));
    expect(g).toMatchObject({ ok: true, width: 8, height: 6 });
    if (g.ok) expect(g.data.length).toBe(8 * 6 * 3);
  });

  it('reports bad files as skips with a reason, never as errors', async () => {
    const good = readFileSync(await writeImage(path.join(dir, 'good.jpg'), solid(64, 64, [10, 20, 30]), 64, 64, 'jpeg'));
    const cases: [string, string, RegExp][] = [
      [path.join(dir, 'missing.jpg'), 'missing', /^missing file$/],
      [writeText(path.join(dir, 'empty.jpg'), ''), 'empty', /^empty file$/],
      [writeText(path.join(dir, 'text.jpg'), 'hello, I am not a picture'), 'not-an-image', /^not an image$/],
      [writeText(path.join(dir, 'truncated.jpg'), good.subarray(0, Math.floor(good.length / 2))), 'corrupt', /^truncated or corrupt image/],
      [dir, 'not-a-file', /^not a file$/],
    ];
    for (const [file, kind, reason] of cases) {
      const r = await pool.decode(task(file));
      expect(r.ok, file).toBe(false);
      if (!r.ok) {
        expect(r.kind, file).toBe(kind);
        expect(r.reason).toMatch(reason);
      }
    }
    const huge = await pool.decode(task(path.join(dir, 'good.jpg'), { maxPixels: 1000 }));
    expect(huge).toEqual({ ok: false, kind: 'oversized', reason: 'oversized (more than 1000 pixels)' });
    const gif = await pool.decode({ ...task(path.join(dir, 'a.png')), formats: ['jpeg'] });
    expect(gif).toMatchObject({ ok: false, kind: 'format-not-accepted' });
    // A valid SVG named and sent as a JPEG: refused on its first bytes, before libvips' SVG
    // loader runs.
    const svg = writeText(path.join(dir, 'vector.jpg'), '<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"><rect width="64" height="64"/></svg>');
    const anyFormat = await pool.decode(task(svg));
    expect(anyFormat.ok).toBe(true); // without an allowlist sharp reads it: the file is a real image
    const refused = await pool.decode({ ...task(svg), formats: ['jpeg', 'png', 'webp'] });
    expect(refused).toEqual({ ok: false, kind: 'format-not-accepted', reason: 'not an accepted image format (svg; accepted: jpeg, png, webp)' });
    const noise = await pool.decode({ ...task(path.join(dir, 'text.jpg')), formats: ['jpeg'] });
    expect(noise).toMatchObject({ kind: 'format-not-accepted', reason: 'not an image of an accepted format (its first bytes carry no jpeg signature)' });
    const pngAsJpeg = await pool.decode({ ...task(path.join(dir, 'a.png')), formats: ['jpeg'] });
    expect(pngAsJpeg).toMatchObject({ ok: false, reason: /^not an accepted image format \(png; accepted: jpeg\)$/ });
    expect((await pool.decode({ ...task(path.join(dir, 'good.jpg')), formats: ['jpeg', 'png', 'webp'] })).ok).toBe(true);
  });
});

describe('the batcher', () => {
  it('packs images back to back with sizes and labels, and logs the skipped ones', async () => {
    const samples: Sample[] = [];
    for (let i = 0; i < 7; i++) {
      const w = 20 + i;
      const file = await writeImage(path.join(dir, 'batch', `${i}.png`), solid(w, 30, [i, i, i]), w, 30);
      samples.push({ path: file, relPath: `batch/${i}.png`, label: i % 8 });
    }
    samples.splice(3, 0, { path: path.join(dir, 'batch', 'gone.png'), relPath: 'batch/gone.png', label: 5 });
    const skips = new SkipLog();
    const out = [];
    for await (const b of batches(samples, { batchSize: 3, prefetch: 1, decode: (t) => pool.decode(t), minWidth: 48, minHeight: 64, skips })) out.push(b);
    expect(out.map((b) => b.widths)).toEqual([[20, 21, 22], [23, 24], [25, 26]]);
    expect(out.map((b) => Array.from(b.labels))).toEqual([[0, 1, 2], [3, 4], [5, 6]]);
    expect(out[1]!.pixels.length).toBe((23 + 24) * 30 * 3);
    expect(out[1]!.pixels[0]).toBe(3);
    expect(out[1]!.pixels[23 * 30 * 3]).toBe(4);
    expect(skips.entries).toEqual([{ path: 'batch/gone.png', reason: 'missing file' }]);
    expect(skips.summary()).toBe('1 skipped: 1 missing file');
  });
});

describe('geometry from a file on disk to the model input tensor', () => {
  const H = 64;
  const W = 48;
  const at = (t: Float32Array, c: number, y: number, x: number) => t[(c * H + y) * W + x]!;

  it('letterbox: white bands above and below, the image stretched to W x W between them', async () => {
    // 30 x 30 blue image with a 15-pixel red square in its top-left quarter.
    const file = await writeImage(path.join(dir, 'square.png'), solid(30, 30, [0, 0, 255], { x: 0, y: 0, size: 15, colour: [255, 0, 0] }), 30, 30);
    const d = await pool.decode(task(file));
    if (!d.ok) throw new Error(d.reason);
    const t = await toInputTensor({ pixels: d.data, widths: [d.width], heights: [d.height] }, { height: H, width: W, geometry: 'letterbox' });
    expect(t.length).toBe(3 * H * W);
    const top = (H - W) / 2; // 8 rows of white above, 8 below
    for (const y of [0, top - 1, top + W, H - 1]) {
      for (let c = 0; c < 3; c++) expect(at(t, c, y, 20)).toBeCloseTo(norm(255, c), 5);
    }
    // The red square covers [0, 24) x [0, 24) of the 48 x 48 area: check well inside it.
    expect([0, 1, 2].map((c) => at(t, c, top + 5, 5))).toEqual([norm(255, 0), norm(0, 1), norm(0, 2)].map((v) => expect.closeTo(v, 5)));
    expect([0, 1, 2].map((c) => at(t, c, top + 40, 40))).toEqual([norm(0, 0), norm(0, 1), norm(255, 2)].map((v) => expect.closeTo(v, 5)));
  });

  it('stretch: the whole image fills W x H, the square scaled with it', async () => {
    // 24 x 16 green image with an 8-pixel yellow square at (8, 4): lands at x [16, 32), y [16, 48).
    const file = await writeImage(path.join(dir, 'stretch.png'), solid(24, 16, [0, 255, 0], { x: 8, y: 4, size: 8, colour: [255, 255, 0] }), 24, 16);
    const d = await pool.decode(task(file));
    if (!d.ok) throw new Error(d.reason);
    const t = await toInputTensor({ pixels: d.data, widths: [d.width], heights: [d.height] }, { height: H, width: W, geometry: 'stretch' });
    expect([0, 1, 2].map((c) => at(t, c, 0, 0))).toEqual([norm(0, 0), norm(255, 1), norm(0, 2)].map((v) => expect.closeTo(v, 5)));
    expect([0, 1, 2].map((c) => at(t, c, 32, 24))).toEqual([norm(255, 0), norm(255, 1), norm(0, 2)].map((v) => expect.closeTo(v, 5)));
    expect(at(t, 2, 63, 47)).toBeCloseTo(norm(0, 2), 5);
    // Into a reused buffer: the same values, the same object back.
    const out = new Float32Array(3 * H * W);
    const again = await toInputTensor({ pixels: d.data, widths: [d.width], heights: [d.height] }, { height: H, width: W, out });
    expect(again).toBe(out);
    expect(Array.from(out)).toEqual(Array.from(t));
    await expect(toInputTensor({ pixels: d.data, widths: [d.width], heights: [d.height] }, { height: H, width: W, out: new Float32Array(10) })).rejects.toThrow(
      /output buffer holds 10 values, expected 1 x 3 x 64 x 48 = 9216/,
    );
    expect(at(t, 0, 10, 24)).toBeCloseTo(norm(0, 0), 5); // above the square
    await expect(toInputTensor({ pixels: d.data, widths: [d.width], heights: [d.height] }, { height: H, width: W, geometry: 'none' })).rejects.toThrow(
      /image 0 is 24 x 16 .* needs exactly 48 x 64/,
    );
  });
});
