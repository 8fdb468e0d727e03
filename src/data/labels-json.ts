/**
 * The reference's label file: JSON `{"0": ["a.jpg", ...], "1": [...], ...}`, class -> file
 * names relative to an image folder. Keys may also be class names ("happy").
 */
import { readFileSync } from 'node:fs';

import { parseClass } from './labels.js';
import { DataRoot } from './paths.js';
import { countBy, DataError, type ClassCount, type ReadResult, type Sample } from './types.js';

export interface LabelsJsonOptions {
  file: string;
  imagesDir: string;
  classes: ClassCount;
}

/** The 1-based line of a character offset (a scan from the start: only for error messages). */
function lineOf(text: string, offset: number): number {
  let line = 1;
  for (let i = 0; i < offset && i < text.length; i++) if (text.charCodeAt(i) === 10) line++;
  return line;
}

/** The line where `"key"` first appears, for messages about it: a scan, so only on errors. */
function lineOfKey(text: string, key: string): number | undefined {
  const at = text.indexOf(`${JSON.stringify(key)}`);
  return at >= 0 ? lineOf(text, at) : undefined;
}

export function readLabelsJson(opts: LabelsJsonOptions): ReadResult {
  const { file } = opts;
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new DataError(`cannot read the label file (${(err as Error).message})`, file);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    const message = (err as Error).message;
    const pos = /position (\d+)/.exec(message);
    throw new DataError(`not valid JSON: ${message}`, file, pos ? lineOf(text, Number(pos[1])) : undefined);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw new DataError('expected an object mapping each class to a list of file names', file, 1);
  }
  const root = new DataRoot(opts.imagesDir);
  const samples: Sample[] = [];
  const dropped: Record<string, number> = {};
  for (const [key, files] of Object.entries(parsed as Record<string, unknown>)) {
    const line = () => lineOfKey(text, key);
    const label = parseClass(key, 8);
    if (label === undefined) {
      throw new DataError(`key '${key}' is not a class: expected 0-7 or an emotion name`, file, line());
    }
    if (!Array.isArray(files) || files.some((f) => typeof f !== 'string')) {
      throw new DataError(`class '${key}' must map to a list of file names`, file, line());
    }
    if (label >= opts.classes) {
      for (let i = 0; i < files.length; i++) countBy(dropped, '7 contempt (7-class label set)');
      continue;
    }
    for (const rel of files as string[]) {
      samples.push({ path: root.resolve(rel, file, () => lineOfKey(text, rel) ?? line()), relPath: rel, label });
    }
  }
  return { samples, dropped, source: file };
}
