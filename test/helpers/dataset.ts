/** A tiny labelled image set whose classes differ by colour: learnable in seconds. */
import path from 'node:path';

import { writeImage, writeText } from './files.js';
import { EMOTIONS_8 } from '../../src/emotions.js';

const HUES: [number, number, number][] = [
  [230, 40, 40], [40, 200, 40], [40, 40, 230], [220, 220, 40], [220, 40, 220], [40, 220, 220], [120, 60, 10], [250, 250, 250],
];

export async function colourFolders(dir: string, perClass: number, seed = 1): Promise<string> {
  let s = seed;
  const noise = () => {
    s = (s * 1103515245 + 12345) >>> 0;
    return (s >>> 26) - 32;
  };
  for (let c = 0; c < 8; c++) {
    for (let i = 0; i < perClass; i++) {
      const [w, h] = [24 + (i % 3) * 4, 32];
      const raw = Buffer.alloc(w * h * 3);
      for (let p = 0; p < w * h; p++) for (let k = 0; k < 3; k++) raw[p * 3 + k] = Math.max(0, Math.min(255, HUES[c]![k]! + noise()));
      await writeImage(path.join(dir, EMOTIONS_8[c]!, `${i}.png`), raw, w, h);
    }
  }
  return dir;
}

export function tinyModelConfig(dir: string, dropout = 0.1): string {
  return writeText(
    path.join(dir, 'model.json'),
    JSON.stringify({
      encoder: { embedDim: 32, depth: 1, heads: 2, inputHeight: 64, inputWidth: 48 },
      head: { numClasses: 8, embedDim: 32, layers: 1, heads: 4, feedforward: 64, dropout },
    }),
  );
}
