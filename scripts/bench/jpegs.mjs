// The JPEG files the preprocessing and end-to-end benchmarks read: ~400 px face-sized images
// with smooth shapes and noise, so they compress like photos; written once under
// .cache/bench/jpegs.
import { mkdirSync, readdirSync } from 'node:fs';
import path from 'node:path';

import sharp from 'sharp';

import { root } from './common.mjs';

export const jpegDir = path.join(root, '.cache/bench/jpegs');

/** The first `count` files, written where missing. */
export async function benchJpegs(count) {
  const dir = jpegDir;
  const COUNT = count;
  mkdirSync(dir, { recursive: true });
  const have = readdirSync(dir).filter((f) => f.endsWith('.jpg')).length;
  for (let i = have; i < COUNT; i++) {
    const w = 360 + ((i * 37) % 80);
    const h = 400 + ((i * 53) % 80);
    const data = Buffer.alloc(w * h * 3);
    let s = i + 1;
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        s = (s * 1103515245 + 12345) >>> 0;
        const n = (s >>> 27) - 16;
        const o = (y * w + x) * 3;
        const r = Math.hypot(x - w / 2, y - h / 2) / (w / 2);
        data[o] = Math.max(0, Math.min(255, 200 - 90 * r + n));
        data[o + 1] = Math.max(0, Math.min(255, 150 - 60 * r + ((x * 3 + i) % 40) + n));
        data[o + 2] = Math.max(0, Math.min(255, 120 + 50 * Math.sin(y / 17 + i) + n));
      }
    }
    await sharp(data, { raw: { width: w, height: h, channels: 3 } }).jpeg({ quality: 90 }).toFile(path.join(dir, `${String(i).padStart(4, '0')}.jpg`));
  }
  return readdirSync(dir).filter((f) => f.endsWith('.jpg')).sort().slice(0, COUNT).map((f) => path.join(dir, f));
}

