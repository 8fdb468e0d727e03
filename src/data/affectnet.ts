/**
 * AffectNet's manually annotated file lists (`training.csv`, `validation.csv`): one row per
 * image with `subDirectory_filePath, face_x, face_y, face_width, face_height,
 * facial_landmarks, expression, valence, arousal`; the header row may be missing.
 * Expression codes 0-7 are the emotions; 8 (none), 9 (uncertain) and 10 (no face) are dropped
 * and counted, as is 7 (contempt) with the 7-class label set.
 */
import { forEachLine } from './lines.js';
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

/**
 * The fields a reader uses from one row, found without splitting the whole line: the five
 * leading ones (path and face box) from the start, the three trailing ones (expression,
 * valence, arousal) from the end, and a check that the landmarks between hold no comma. A line
 * with a quote in it goes through the full CSV split instead.
 */
function rowFields(bytes: Buffer, start: number, end: number, file: string, lineNo: number): string[] {
  // A view of the line, so every search stops at its end.
  const line = bytes.subarray(start, end);
  if (line.indexOf(0x22) < 0) {
    const commas: number[] = [];
    let at = -1;
    for (let i = 0; i < 5; i++) {
      at = line.indexOf(0x2c, at + 1);
      if (at < 0) break;
      commas.push(at);
    }
    const last3 = line.lastIndexOf(0x2c);
    const last2 = last3 > 0 ? line.lastIndexOf(0x2c, last3 - 1) : -1;
    const last1 = last2 > 0 ? line.lastIndexOf(0x2c, last2 - 1) : -1;
    // last1..last3 are the last three commas; the fifth from the start must be the one before them.
    if (commas.length === 5 && last1 > commas[4]! && line.indexOf(0x2c, commas[4]! + 1) === last1) {
      const text = (a: number, b: number) => line.toString('utf8', a, b);
      return [
        text(0, commas[0]!),
        text(commas[0]! + 1, commas[1]!),
        text(commas[1]! + 1, commas[2]!),
        text(commas[2]! + 1, commas[3]!),
        text(commas[3]! + 1, commas[4]!),
        '', // the landmarks: not used
        text(last1 + 1, last2),
        text(last2 + 1, last3),
        text(last3 + 1, line.length),
      ];
    }
  }
  return splitCsvLine(line.toString('utf8'), file, lineNo);
}

export async function readAffectNet(opts: AffectNetOptions): Promise<ReadResult> {
  const root = new DataRoot(opts.imagesDir);
  const file = opts.csv;
  const samples: Sample[] = [];
  const dropped: Record<string, number> = {};
  const visit = (bytes: Buffer, start: number, end: number, lineNo: number) => {
    let blank = true;
    for (let i = start; i < end && blank; i++) blank = bytes[i] === 0x20 || bytes[i] === 0x09;
    if (blank) return;
    const fields = rowFields(bytes, start, end, file, lineNo);
    if (lineNo === 1 && fields[0]!.trim().toLowerCase() === 'subdirectory_filepath') {
      return;
    }
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
      return;
    }
    if (code >= opts.classes) {
      countBy(dropped, '7 contempt (7-class label set)');
      return;
    }
    const rel = relPath.trim();
    const sample: Sample = { path: root.resolve(rel, file, lineNo), relPath: rel, label: code };
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
  };
  try {
    await forEachLine(file, visit);
  } catch (err) {
    if (err instanceof DataError) throw err;
    throw new DataError(`cannot read the label file (${(err as Error).message})`, file);
  }
  return { samples, dropped, source: file };
}
