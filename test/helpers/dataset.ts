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

/**
 * The colour classes in AffectNet's layout as its owners unpack it:
 * `Manually_Annotated_file_lists/training.csv` (header row, plus rows with the non-emotion
 * codes 8-10 that readers drop) and `validation.csv` (no header), images under
 * `Manually_Annotated_Images/<folder>/`.
 */
export async function colourAffectNet(root: string, trainPerClass: number, testPerClass: number, seed = 1): Promise<string> {
  const source = await colourFolders(path.join(root, '.source'), trainPerClass + testPerClass, seed);
  const { copyFileSync, mkdirSync, rmSync } = await import('node:fs');
  const rows: Record<'training' | 'validation', string[]> = { training: [], validation: [] };
  for (let c = 0; c < 8; c++) {
    for (let i = 0; i < trainPerClass + testPerClass; i++) {
      const rel = `${c + 1}/img${c}-${i}.png`;
      mkdirSync(path.join(root, 'Manually_Annotated_Images', String(c + 1)), { recursive: true });
      copyFileSync(path.join(source, EMOTIONS_8[c]!, `${i}.png`), path.join(root, 'Manually_Annotated_Images', rel));
      rows[i < trainPerClass ? 'training' : 'validation'].push(`${rel},0,0,24,32,1.0;2.0,${c},0.1,-0.1`);
    }
  }
  rows.training.push('9/none.png,0,0,24,32,1.0;2.0,8,0,0', '9/noface.png,0,0,24,32,1.0;2.0,10,0,0');
  rmSync(source, { recursive: true });
  const header = 'subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal';
  writeText(path.join(root, 'Manually_Annotated_file_lists', 'training.csv'), [header, ...rows.training].join('\n') + '\n');
  writeText(path.join(root, 'Manually_Annotated_file_lists', 'validation.csv'), rows.validation.join('\n') + '\n');
  return root;
}
