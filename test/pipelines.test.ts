/** The pipelines the CLI and library users share: files to predictions, a data folder to metrics. */
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

import { evaluateData, expandInputs, MotivNet, predictFiles, preprocessing } from '../src/index.js';
import { colourFolders } from './helpers/dataset.js';
import { tempDir } from './helpers/files.js';
import { maxAbsDiff } from './helpers/safetensors.js';

const fixtures = path.resolve(__dirname, '../crates/motivnet/tests/fixtures');
const photos = path.resolve(__dirname, 'fixtures/decode');
const fixtureModel = { model: path.join(fixtures, 'config.json'), weights: path.join(fixtures, 'weights.safetensors') };
const pool = new preprocessing.PreprocessPool({ threads: 2 });
afterAll(() => pool.destroy());

describe('predictFiles', () => {
  it('predicts each decodable file in order, as the model does on its pixels, and records the rest', async () => {
    const model = await MotivNet.load(fixtureModel);
    try {
      const files = [path.join(photos, 'grey.jpg'), path.join(photos, 'nope.png'), path.join(photos, 'alpha.png')];
      const skips = new preprocessing.SkipLog();
      const out = [];
      for await (const r of predictFiles(model, pool, files, { skips, batchSize: 2 })) out.push(r);
      expect(out.map((r) => r.file)).toEqual([files[0], files[2]]);
      expect(skips.entries).toEqual([{ path: files[1], reason: 'missing file' }]);
      const decoded = await pool.decode({ path: files[2]!, minWidth: 48, minHeight: 64, maxPixels: 1 << 24 });
      if (!decoded.ok) throw new Error(decoded.reason);
      const direct = await model.predict({ data: decoded.data, width: decoded.width, height: decoded.height });
      expect(maxAbsDiff(out[1]!.logits, direct.logits)).toBeLessThan(1e-6);
      expect(out[1]!.top).toEqual(direct.top[0]);
      expect(expandInputs([photos]).filter((f) => f.endsWith('.jpg')).length).toBeGreaterThan(8);
    } finally {
      model.dispose();
    }
  });
});

describe('evaluateData', () => {
  it('evaluates every image of a folder set with the label set of the model', async () => {
    const data = await colourFolders(path.join(tempDir('pipeline'), 'set'), 2, 5);
    const r = await evaluateData({ model: fixtureModel, data, batchSize: 4 });
    expect(r.images).toBe(16);
    expect(r.labels).toBe(data);
    expect(r.confusion).toHaveLength(8);
    expect(r.skipped.count).toBe(0);
    expect(r.accuracy).toBeCloseTo(r.confusion.reduce((t, row, i) => t + row[i]!, 0) / 16, 12);
  });
});
