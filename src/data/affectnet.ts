/**
 * AffectNet's manually annotated file lists (`training.csv`, `validation.csv`): one row per
 * image with `subDirectory_filePath, face_x, face_y, face_width, face_height,
 * facial_landmarks, expression, valence, arousal`; the header row may be missing.
 * Expression codes 0-7 are the emotions; 8 (none), 9 (uncertain) and 10 (no face) are dropped
 * and counted, as is 7 (contempt) with the 7-class label set.
 */
import { createReadStream } from 'node:fs';
import { createInterface } from 'node:readline';

import { DataRoot } from './paths.js';
import { countBy, DataError, type ClassCount, type ReadResult, type Sample } from './types.js';

export interface AffectNetOptions {
  /** The CSV file. */
  csv: string;
  /** The folder that `subDirectory_filePath` is relative to. */
  imagesDir: string;
  classes: ClassCount;
  /** Attach the listed face box to each sample, so the pipeline crops to it. */
  cropToFace?: boolean;
}

const COLUMNS = 9;
const NON_EMOTION: Record<number, string> = { 8: '8 none', 9: '9 uncertain', 10: '10 no face' };

/** Splits one CSV line (RFC 4180 quoting, no embedded newlines). */
export function splitCsvLine(line: string, file: string, lineNo: number): string[] {
  const fields: string[] = [];
  let field = '';
  let quoted = false;
  for (let i = 0; i < line.length; i++) {
    const ch = line[i]!;
    if (quoted) {
      if (ch === '"' && line[i + 1] === '"') {
        field += '"';
        i++;
      } else if (ch === '"') {
        quoted = false;
      } else {
        field += ch;
      }
    } else if (ch === '"' && field === '') {
      quoted = true;
    } else if (ch === ',') {
      fields.push(field);
      field = '';
    } else {
      field += ch;
    }
  }
  if (quoted) throw new DataError('unterminated quoted field', file, lineNo);
  fields.push(field);
  return fields;
}

function number(value: string, column: string, file: string, line: number): number {
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n)) {
    throw new DataError(`${column} '${value}' is not a number`, file, line);
  }
  return n;
}

export async function readAffectNet(opts: AffectNetOptions): Promise<ReadResult> {
  const root = new DataRoot(opts.imagesDir);
  const file = opts.csv;
  const samples: Sample[] = [];
  const dropped: Record<string, number> = {};
  const input = createReadStream(file, { encoding: 'utf8' });
  const opened = new Promise<void>((resolve, reject) => {
    input.once('open', () => resolve());
    input.once('error', (err) => reject(new DataError(`cannot read the label file (${(err as Error).message})`, file)));
  });
  await opened;
  const lines = createInterface({ input, crlfDelay: Infinity });
  let lineNo = 0;
  for await (const raw of lines) {
    lineNo++;
    const line = lineNo === 1 ? raw.replace(/^\uFEFF/, '') : raw;
    if (line.trim() === '') continue;
    const fields = splitCsvLine(line, file, lineNo);
    if (lineNo === 1 && fields[0]!.trim().toLowerCase() === 'subdirectory_filepath') continue; // header
    if (fields.length !== COLUMNS) {
      throw new DataError(`expected ${COLUMNS} columns (subDirectory_filePath, face_x, face_y, face_width, face_height, facial_landmarks, expression, valence, arousal), got ${fields.length}`, file, lineNo);
    }
    const [relPath, fx, fy, fw, fh, , expr] = fields as [string, string, string, string, string, string, string];
    if (!/^\s*\d+\s*$/.test(expr)) {
      throw new DataError(`expression '${expr}' is not an integer code 0-10`, file, lineNo);
    }
    const code = Number(expr);
    if (code > 10) throw new DataError(`expression ${code} is not a code 0-10`, file, lineNo);
    if (code >= 8) {
      countBy(dropped, NON_EMOTION[code]!);
      continue;
    }
    if (code >= opts.classes) {
      countBy(dropped, '7 contempt (7-class label set)');
      continue;
    }
    const path = root.resolve(relPath.trim(), file, lineNo);
    const sample: Sample = { path, relPath: relPath.trim(), label: code };
    if (opts.cropToFace) {
      const box = {
        x: number(fx, 'face_x', file, lineNo),
        y: number(fy, 'face_y', file, lineNo),
        width: number(fw, 'face_width', file, lineNo),
        height: number(fh, 'face_height', file, lineNo),
      };
      if (box.x < 0 || box.y < 0 || box.width <= 0 || box.height <= 0) {
        throw new DataError(`face box ${fx},${fy},${fw},${fh} must have x, y >= 0 and a positive size`, file, lineNo);
      }
      sample.box = box;
    }
    samples.push(sample);
  }
  return { samples, dropped, source: file };
}
