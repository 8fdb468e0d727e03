import { mkdirSync, symlinkSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

import {
  balancedSample,
  DataError,
  epochOrder,
  readAffectNet,
  readFolders,
  readLabelsJson,
  splitTrainValidation,
  type Sample,
} from '../src/data/index.js';
import { tempDir, writeText } from './helpers/files.js';

const HEADER = 'subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal';
const row = (file: string, code: number, box = '10,12,50,60') => `${file},${box},"1.0;2.0;3.0",${code},0.5,-0.2`;

describe('AffectNet reader', () => {
  it('reads rows with or without a header, drops codes 8-10 and counts them', async () => {
    const dir = tempDir('affectnet');
    const rows = [row('1/a.jpg', 0), row('1/b.jpg', 1), row('2/c.jpg', 8), row('2/d.jpg', 9), row('2/e.jpg', 10), row('2/f.jpg', 7), row('3/g.jpg', 10)];
    for (const [name, text] of [['with.csv', [HEADER, ...rows].join('\n')], ['without.csv', rows.join('\r\n') + '\r\n']] as const) {
      const csv = writeText(path.join(dir, name), text);
      const r = await readAffectNet({ csv, imagesDir: dir, classes: 8 });
      expect(r.samples.map((s) => [s.relPath, s.label])).toEqual([['1/a.jpg', 0], ['1/b.jpg', 1], ['2/f.jpg', 7]]);
      expect(r.samples[0]!.path).toBe(path.join(dir, '1/a.jpg'));
      expect(r.samples[0]!.box).toBeUndefined();
      expect(r.dropped).toEqual({ '8 none': 1, '9 uncertain': 1, '10 no face': 2 });
    }
    const seven = await readAffectNet({ csv: path.join(dir, 'with.csv'), imagesDir: dir, classes: 7, cropToFace: true });
    expect(seven.samples.map((s) => s.label)).toEqual([0, 1]);
    expect(seven.dropped['7 contempt (7-class label set)']).toBe(1);
    expect(seven.samples[0]!.box).toEqual({ x: 10, y: 12, width: 50, height: 60 });
  });

  it('names the file and line of a malformed row', async () => {
    const dir = tempDir('affectnet-bad');
    const cases: [string, RegExp][] = [
      [[HEADER, row('a.jpg', 1), 'b.jpg,1,2,3'].join('\n'), /bad\.csv:3: expected 9 columns .* got 4/],
      [[HEADER, row('a.jpg', 1), row('b.jpg', 1).replace(',1,0.5', ',happy,0.5')].join('\n'), /bad\.csv:3: expression 'happy' is not an integer code 0-10/],
      [[row('a.jpg', 11)].join('\n'), /bad\.csv:1: expression 11 is not a code 0-10/],
      [[HEADER, '"a.jpg,1,2,3,4,x,1,0,0'].join('\n'), /bad\.csv:2: unterminated quoted field/],
    ];
    for (const [text, message] of cases) {
      const csv = writeText(path.join(dir, 'bad.csv'), text);
      await expect(readAffectNet({ csv, imagesDir: dir, classes: 8 })).rejects.toThrow(message);
    }
    const csv = writeText(path.join(dir, 'box.csv'), row('a.jpg', 1, '1,2,0,4'));
    await expect(readAffectNet({ csv, imagesDir: dir, classes: 8, cropToFace: true })).rejects.toThrow(/box\.csv:1: face box 1,2,0,4/);
    await expect(readAffectNet({ csv: path.join(dir, 'absent.csv'), imagesDir: dir, classes: 8 })).rejects.toThrow(/absent\.csv: cannot read/);
  });

  it('reads rows as the owners write them: unquoted landmarks, BOM, CRLF, no final newline', async () => {
    const dir = tempDir('affectnet-real');
    const marks = Array.from({ length: 136 }, (_, i) => (100 + i * 1.25).toFixed(2)).join(';');
    const real = (file: string, code: number) => `${file},134,97,508,508,${marks},${code},0.785714,-0.055556`;
    const text = '\uFEFF' + [HEADER, real('689/a b.jpg', 1), real('690/é.png', 6), real('691/c.jpg', 9)].join('\r\n');
    const csv = writeText(path.join(dir, 'training.csv'), text);
    const r = await readAffectNet({ csv, imagesDir: dir, classes: 8, cropToFace: true });
    expect(r.samples.map((s) => [s.relPath, s.label, s.box])).toEqual([
      ['689/a b.jpg', 1, { x: 134, y: 97, width: 508, height: 508 }],
      ['690/é.png', 6, { x: 134, y: 97, width: 508, height: 508 }],
    ]);
    expect(r.dropped).toEqual({ '9 uncertain': 1 });
    // A stray comma among the landmarks is a tenth column, named with its line.
    const bad = writeText(path.join(dir, 'bad.csv'), [real('a.jpg', 1), real('b.jpg', 2).replace(';101.25;', ',101.25;')].join('\n'));
    await expect(readAffectNet({ csv: bad, imagesDir: dir, classes: 8 })).rejects.toThrow(/bad\.csv:2: expected 9 columns .* got 10/);
  });

  it('rejects paths that escape the data folder, by name', async () => {
    const base = tempDir('escape');
    const dir = path.join(base, 'images');
    mkdirSync(dir);
    writeText(path.join(base, 'secret.jpg'), 'outside');
    symlinkSync(path.join(base, 'secret.jpg'), path.join(dir, 'link.jpg'));
    const cases: [string, RegExp][] = [
      ['../secret.jpg', /image path '\.\.\/secret\.jpg' escapes the data folder/],
      ['1/../../secret.jpg', /escapes the data folder/],
      ['/etc/passwd', /image path '\/etc\/passwd' is absolute/],
      ['link.jpg', /image path 'link\.jpg' is a link to .*secret\.jpg, outside the data folder/],
    ];
    for (const [file, message] of cases) {
      const csv = writeText(path.join(base, 'labels.csv'), [HEADER, row('ok.jpg', 1), row(file, 2)].join('\n'));
      await expect(readAffectNet({ csv, imagesDir: dir, classes: 8 })).rejects.toThrow(message);
      await expect(readAffectNet({ csv, imagesDir: dir, classes: 8 })).rejects.toThrow(/labels\.csv:3:/);
    }
    // A folder that is a link out of the data folder: its files are outside too.
    mkdirSync(path.join(base, 'elsewhere'));
    writeText(path.join(base, 'elsewhere', 'x.jpg'), 'outside');
    symlinkSync(path.join(base, 'elsewhere'), path.join(dir, 'sub'));
    const viaFolder = writeText(path.join(base, 'folder.csv'), [HEADER, row('sub/x.jpg', 1)].join('\n'));
    await expect(readAffectNet({ csv: viaFolder, imagesDir: dir, classes: 8 })).rejects.toThrow(/folder\.csv:2: image path 'sub\/x\.jpg' lies in a link to .*elsewhere, outside the data folder/);
    // A link that stays inside is fine, and so is a name that merely begins with two dots.
    writeText(path.join(dir, 'real.jpg'), 'x');
    symlinkSync(path.join(dir, 'real.jpg'), path.join(dir, 'alias.jpg'));
    const inside = writeText(path.join(base, 'inside.csv'), [row('alias.jpg', 1), row('..hidden.jpg', 2)].join('\n'));
    expect((await readAffectNet({ csv: inside, imagesDir: dir, classes: 8 })).samples).toHaveLength(2);
    // A missing file is not an error here: the pipeline reports it when it gets there.
    const csv = writeText(path.join(base, 'labels.csv'), [row('missing.jpg', 1)].join('\n'));
    expect((await readAffectNet({ csv, imagesDir: dir, classes: 8 })).samples).toHaveLength(1);
  });
});

describe('JSON label file reader', () => {
  it('reads class -> files with indices or names', () => {
    const dir = tempDir('json');
    const file = writeText(path.join(dir, 'labels.json'), JSON.stringify({ '0': ['a.jpg', 'b.jpg'], happy: ['c.jpg'], '7': ['d.jpg'] }, null, 2));
    const r = readLabelsJson({ file, imagesDir: dir, classes: 8 });
    // (JSON objects list integer keys first; sampling sorts, so the order carries nothing.)
    expect(r.samples.map((s) => [s.relPath, s.label])).toEqual([['a.jpg', 0], ['b.jpg', 0], ['d.jpg', 7], ['c.jpg', 1]]);
    const seven = readLabelsJson({ file, imagesDir: dir, classes: 7 });
    expect(seven.samples).toHaveLength(3);
    expect(seven.dropped).toEqual({ '7 contempt (7-class label set)': 1 });
  });

  it('names the file and line of malformed JSON and bad entries', () => {
    const dir = tempDir('json-bad');
    const bad = (text: string) => writeText(path.join(dir, 'labels.json'), text);
    expect(() => readLabelsJson({ file: bad('{\n  "0": ["a.jpg",\n  "1": []\n}'), imagesDir: dir, classes: 8 })).toThrow(/labels\.json:3: not valid JSON/);
    expect(() => readLabelsJson({ file: bad('{\n"0": ["a.jpg"],\n"joy": ["b.jpg"]\n}'), imagesDir: dir, classes: 8 })).toThrow(/labels\.json:3: key 'joy' is not a class/);
    expect(() => readLabelsJson({ file: bad('{"0": "a.jpg"}'), imagesDir: dir, classes: 8 })).toThrow(/labels\.json:1: class '0' must map to a list/);
    expect(() => readLabelsJson({ file: bad('[1, 2]'), imagesDir: dir, classes: 8 })).toThrow(/labels\.json:1: expected an object/);
    expect(() => readLabelsJson({ file: bad('{\n"0": ["ok.jpg",\n "../../x.jpg"]\n}'), imagesDir: dir, classes: 8 })).toThrow(
      /labels\.json:3: image path '\.\.\/\.\.\/x\.jpg' escapes the data folder/,
    );
  });
});

describe('folder-per-class reader', () => {
  it('reads named and numbered class folders, counting non-image files', () => {
    const dir = tempDir('folders');
    writeText(path.join(dir, 'happy', 'a.jpg'), 'x');
    writeText(path.join(dir, 'happy', 'notes.txt'), 'x');
    writeText(path.join(dir, '0', 'b.png'), 'x');
    writeText(path.join(dir, 'contempt', 'c.webp'), 'x');
    const r = readFolders({ dir, classes: 8 });
    expect(r.samples.map((s) => [s.relPath, s.label])).toEqual([[path.join('0', 'b.png'), 0], [path.join('contempt', 'c.webp'), 7], [path.join('happy', 'a.jpg'), 1]]);
    expect(r.dropped).toEqual({ 'not an image file name': 1 });
    expect(readFolders({ dir, classes: 7 }).dropped['7 contempt (7-class label set)']).toBe(1);
    writeText(path.join(dir, 'joyful', 'd.jpg'), 'x');
    expect(() => readFolders({ dir, classes: 8 })).toThrow(/folder 'joyful' is not a class/);
    expect(() => readFolders({ dir: path.join(dir, 'nope'), classes: 8 })).toThrow(DataError);
  });
});

function fakeSamples(counts: number[]): Sample[] {
  return counts.flatMap((n, label) => Array.from({ length: n }, (_, i) => ({ path: `/d/${label}/${i}.jpg`, relPath: `${label}/${String(i).padStart(4, '0')}.jpg`, label })));
}

describe('balanced sampling and split', () => {
  const counts = [50, 200, 30, 40, 35, 31, 80, 33];

  it('takes the smallest class size from every class, without replacement, reproducibly', () => {
    const all = fakeSamples(counts);
    const { samples, report } = balancedSample(all, 8, { seed: 7 });
    expect(report.before).toEqual(counts);
    expect(report.after).toEqual(Array(8).fill(30));
    expect(samples).toHaveLength(240);
    expect(new Set(samples.map((s) => s.relPath)).size).toBe(240);
    for (let c = 0; c < 8; c++) expect(samples.filter((s) => s.label === c)).toHaveLength(30);
    const again = balancedSample(all.slice().reverse(), 8, { seed: 7 }).samples; // input order does not matter
    expect(again.map((s) => s.relPath)).toEqual(samples.map((s) => s.relPath));
    const other = balancedSample(all, 8, { seed: 8 }).samples;
    expect(other.map((s) => s.relPath)).not.toEqual(samples.map((s) => s.relPath));
    expect(balancedSample(all, 8, { seed: 7, capPerClass: 10 }).samples).toHaveLength(80);
    expect(() => balancedSample(fakeSamples([5, 0, 5, 5, 5, 5, 5, 5]), 8, { seed: 1 })).toThrow(/class 1 \(happy\) has no images/);
  });

  it('splits 9:1 per class, disjoint and reproducible, and orders epochs by seed', () => {
    const { samples } = balancedSample(fakeSamples(counts), 8, { seed: 3 });
    const { train, validation } = splitTrainValidation(samples, 8, { seed: 3 });
    expect(train).toHaveLength(216);
    expect(validation).toHaveLength(24);
    for (let c = 0; c < 8; c++) expect(validation.filter((s) => s.label === c)).toHaveLength(3);
    const names = new Set(train.map((s) => s.relPath));
    expect(validation.some((s) => names.has(s.relPath))).toBe(false);
    expect(splitTrainValidation(samples, 8, { seed: 3 }).validation).toEqual(validation);
    expect(splitTrainValidation(samples, 8, { seed: 3, validationFraction: 0.2 }).validation).toHaveLength(48);
    const e0 = epochOrder(train, 3, 0);
    expect(epochOrder(train, 3, 0)).toEqual(e0);
    expect(epochOrder(train, 3, 1)).not.toEqual(e0);
    expect(e0.slice().sort((a, b) => (a.relPath < b.relPath ? -1 : 1))).toEqual(train);
  });
});
