/**
 * The pixels the model sees against the reference's: every fixture image decoded by the
 * preprocessing pool and resized by the core, against what `cv2.imread` +
 * `cv2.resize(INTER_LINEAR)` make of the same file (test/fixtures/decode, written by
 * scripts/reference/make_fixtures.py). Photographs far larger than the input, EXIF
 * orientations, extreme aspect ratios, greyscale, alpha and 16-bit files.
 */
import { readdirSync } from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

import { toInputTensor } from '../src/index.js';
import { PreprocessPool } from '../src/preprocess/index.js';
import { readSafetensors } from './helpers/safetensors.js';

const dir = path.resolve(__dirname, 'fixtures/decode');
const expected = readSafetensors(path.join(dir, 'expected.safetensors'));
const files = readdirSync(dir).filter((f) => /\.(jpe?g|png)$/.test(f)).sort();
const MEAN = [123.5, 116.5, 103.5];
const STD = [58.5, 57.0, 57.5];
const [HEIGHT, WIDTH] = [64, 48];

const pool = new PreprocessPool({ threads: 2 });
afterAll(() => pool.destroy());

/** The largest difference in u8 levels between the core's normalized (3, h, w) output rows [top, top+rows) and an (h, w, 3) image. */
function levelDiff(tensor: Float32Array, reference: Uint8Array, top: number, rows: number): number {
  let worst = 0;
  for (let c = 0; c < 3; c++) {
    for (let y = 0; y < rows; y++) {
      for (let x = 0; x < WIDTH; x++) {
        const level = tensor[c * HEIGHT * WIDTH + (top + y) * WIDTH + x]! * STD[c]! + MEAN[c]!;
        worst = Math.max(worst, Math.abs(level - reference[(y * WIDTH + x) * 3 + c]!));
      }
    }
  }
  return worst;
}

describe('decode + resize against cv2.imread + cv2.resize', () => {
  it('finds every fixture file', () => {
    expect(files.length).toBe(Object.keys(expected).filter((k) => k.endsWith(':size')).length);
    expect(files).toContain('coffee-4000x2667.jpg');
  });

  for (const file of files) {
    it(`${file}: the same size and orientation, every pixel within one level`, async () => {
      const decoded = await pool.decode({ path: path.join(dir, file), minWidth: WIDTH, minHeight: HEIGHT, maxPixels: 64 << 20 });
      if (!decoded.ok) throw new Error(decoded.reason);
      expect([decoded.width, decoded.height]).toEqual(Array.from(expected[`${file}:size`]!.data as Int32Array));
      const image = { pixels: decoded.data, widths: [decoded.width], heights: [decoded.height] };
      const stretched = await toInputTensor(image, { height: HEIGHT, width: WIDTH, geometry: 'stretch' });
      expect(levelDiff(stretched, expected[`${file}:stretch`]!.data as Uint8Array, 0, HEIGHT)).toBeLessThanOrEqual(1 + 1e-3);
      const boxed = await toInputTensor(image, { height: HEIGHT, width: WIDTH, geometry: 'letterbox' });
      expect(levelDiff(boxed, expected[`${file}:square`]!.data as Uint8Array, (HEIGHT - WIDTH) / 2, WIDTH)).toBeLessThanOrEqual(1 + 1e-3);
    });
  }
});
