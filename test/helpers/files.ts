/** Small image files and data folders generated for tests. */
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

import sharp from 'sharp';

export function tempDir(prefix: string): string {
  return mkdtempSync(path.join(tmpdir(), `motivnet-${prefix}-`));
}

export type Rgb = [number, number, number];

/** A width x height image of one colour, optionally with a filled square of another. */
export function solid(width: number, height: number, colour: Rgb, square?: { x: number; y: number; size: number; colour: Rgb }): Buffer {
  const data = Buffer.alloc(width * height * 3);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const inside = square && x >= square.x && x < square.x + square.size && y >= square.y && y < square.y + square.size;
      const c = inside ? square.colour : colour;
      data.set(c, (y * width + x) * 3);
    }
  }
  return data;
}

export async function writeImage(file: string, raw: Buffer, width: number, height: number, format: 'png' | 'jpeg' = 'png', orientation?: number): Promise<string> {
  mkdirSync(path.dirname(file), { recursive: true });
  let img = sharp(raw, { raw: { width, height, channels: 3 } });
  img = format === 'png' ? img.png() : img.jpeg({ quality: 95 });
  if (orientation) img = img.withMetadata({ orientation });
  await img.toFile(file);
  return file;
}

export function writeText(file: string, text: string | Buffer): string {
  mkdirSync(path.dirname(file), { recursive: true });
  writeFileSync(file, text);
  return file;
}
