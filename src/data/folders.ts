/**
 * A folder per class: `neutral/`, `happy/`, ... or `0/`, `1/`, ... under one data folder.
 * Files in them are taken when their extension is an image format sharp decodes; other files
 * are counted and left out.
 */
import { readdirSync } from 'node:fs';
import path from 'node:path';

import { parseClass } from './labels.js';
import { DataRoot } from './paths.js';
import { countBy, DataError, type ClassCount, type ReadResult, type Sample } from './types.js';

export const IMAGE_EXTENSIONS = new Set(['.jpg', '.jpeg', '.png', '.webp', '.gif', '.tif', '.tiff', '.avif', '.bmp']);

export interface FoldersOptions {
  dir: string;
  classes: ClassCount;
}

export function readFolders(opts: FoldersOptions): ReadResult {
  const root = new DataRoot(opts.dir);
  const samples: Sample[] = [];
  const dropped: Record<string, number> = {};
  const entries = readdirSync(root.dir, { withFileTypes: true }).filter((e) => e.isDirectory() && !e.name.startsWith('.'));
  if (entries.length === 0) {
    throw new DataError('no class folders found: expected neutral/, happy/, ... or 0/, 1/, ...', root.dir);
  }
  const seen = new Map<number, string>();
  for (const entry of entries.sort((a, b) => (a.name < b.name ? -1 : 1))) {
    const label = parseClass(entry.name, 8);
    if (label === undefined) {
      throw new DataError(`folder '${entry.name}' is not a class: expected an emotion name or 0-7`, root.dir);
    }
    const other = seen.get(label);
    if (other !== undefined) {
      throw new DataError(`folders '${other}' and '${entry.name}' are the same class`, root.dir);
    }
    seen.set(label, entry.name);
    for (const file of readdirSync(path.join(root.dir, entry.name), { withFileTypes: true })) {
      if (file.name.startsWith('.') || file.isDirectory()) continue;
      if (!IMAGE_EXTENSIONS.has(path.extname(file.name).toLowerCase())) {
        countBy(dropped, 'not an image file name');
        continue;
      }
      if (label >= opts.classes) {
        countBy(dropped, '7 contempt (7-class label set)');
        continue;
      }
      const rel = path.join(entry.name, file.name);
      samples.push({ path: root.resolve(rel, root.dir), relPath: rel, label });
    }
  }
  return { samples, dropped, source: root.dir };
}
