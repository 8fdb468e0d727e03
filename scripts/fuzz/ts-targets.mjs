// The TypeScript readers of untrusted bytes as fuzz targets (run by scripts/fuzz/run.mjs):
//
//   labels-json   the reference's JSON label file   readLabelsJson
//   affectnet-csv AffectNet's CSV                    readAffectNet
//   image-header  image bytes a server receives      sniffFormat, then the decoding worker
//
// A reader must return or throw a DataError naming the file; every path it returns must lie
// inside the image folder; the decoder must answer { ok } or a failure of a known kind, never
// reject. Anything else is a crash: the input is kept under WORK/crashes. Each input is written
// to WORK/current-TARGET first, so an abort (a native crash) leaves it behind for the driver.
//
//   node scripts/fuzz/ts-targets.mjs --target NAME --seconds N --seed S --work DIR
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { createHash } from 'node:crypto';

import sharp from 'sharp';

import { root } from '../bench/common.mjs';
import { mutate, Rng } from './mutate.mjs';

const { values } = parseArgs({ options: { target: { type: 'string' }, seconds: { type: 'string', default: '30' }, seed: { type: 'string', default: '1' }, work: { type: 'string', default: path.join(root, '.cache/fuzz') } } });
const work = path.resolve(values.work);
const imagesDir = path.join(work, 'images');
mkdirSync(imagesDir, { recursive: true });

const { readLabelsJson, readAffectNet, DataError } = await import(path.join(root, 'dist/data/index.js'));
const { sniffFormat } = await import(path.join(root, 'dist/preprocess/sniff.js'));
const { PreprocessPool } = await import(path.join(root, 'dist/preprocess/pool.js'));

const inside = (p) => {
  const rel = path.relative(imagesDir, path.resolve(imagesDir, p));
  return rel !== '' && !rel.startsWith('..') && !path.isAbsolute(rel);
};

/** A reader's result is sound: samples inside the image folder, with usable labels and boxes. */
function checkRead(result) {
  for (const s of result.samples) {
    if (!inside(s.path)) throw new Error(`a sample escapes the image folder: ${s.path}`);
    if (!Number.isInteger(s.label) || s.label < 0 || s.label > 7) throw new Error(`label ${s.label}`);
    if (s.box && ![s.box.x, s.box.y, s.box.width, s.box.height].every(Number.isFinite)) throw new Error(`box ${JSON.stringify(s.box)}`);
  }
}

/** Runs a reader; a DataError naming the file is an answer, anything else thrown a crash. */
async function read(file, reader) {
  try {
    checkRead(await reader());
    return 'read';
  } catch (err) {
    if (err instanceof DataError && err.message.startsWith(file)) return `refused: ${err.message.slice(file.length).replace(/\d+/g, '#').slice(0, 80)}`;
    throw err;
  }
}

const DECODE_FAILURES = new Set(['no-input', 'missing', 'not-a-file', 'permission', 'empty', 'not-an-image', 'format-not-accepted', 'oversized', 'extreme-aspect', 'corrupt', 'unreadable']);

async function imageSeeds() {
  const raw = Buffer.alloc(48 * 40 * 3);
  for (let i = 0; i < raw.length; i++) raw[i] = (i * 7) % 251;
  const img = () => sharp(raw, { raw: { width: 48, height: 40, channels: 3 } });
  return [await img().jpeg().toBuffer(), await img().png().toBuffer(), await img().webp().toBuffer(), await img().jpeg({ progressive: true }).withMetadata({ orientation: 6 }).toBuffer()];
}

const TARGETS = {
  'labels-json': {
    ext: 'json',
    seeds: () => [
      Buffer.from(JSON.stringify({ 0: ['a.jpg', 'sub/b.png'], happy: ['c.jpg'], 7: [] })),
      Buffer.from('{"1": ["x/y/z.jpg"], "2": ["w.webp", "v.jpg"], "sad": ["s.png"]}'),
    ],
    tokens: ['"../x.jpg"', '"/etc/passwd"', '"a\\u0000b.jpg"', '[[[[[[[[[[]]]]]]]]]]', '1e999', '-1', '"8"', '"contempt"', 'null', '{}', '""', '"C:\\\\x.jpg"'],
    run: (file) => read(file, () => readLabelsJson({ file, imagesDir, classes: 8 })),
  },
  'affectnet-csv': {
    ext: 'csv',
    seeds: () => [
      Buffer.from(
        'subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal\n' +
          '689/a.jpg,10,12,100,100,"1.0;2.0;3.0",1,0.5,0.2\n' +
          '12/b.png,0,0,64,80,"",7,-0.1,0.3\n' +
          '"3/c,d.jpg",5,5,20,20,"",9,0,0\n',
      ),
    ],
    tokens: ['"', '""', ',', '\n', '\r\n', '../../x.jpg', '/abs.jpg', '-5', 'NaN', '1e309', '99999999999999999999', '11', ' '],
    run: (file) => read(file, () => readAffectNet({ csv: file, imagesDir, classes: 8, cropToFace: true })),
  },
  'image-header': {
    ext: 'bin',
    seeds: imageSeeds,
    tokens: ['\xff\xd8\xff', '\x89PNG\r\n\x1a\n', 'RIFF\0\0\0\0WEBP', '<svg', 'GIF89a', 'II*\0', '\0\0\0\x18ftypheic', '\xff\xff\xff\x7f'],
    async run(file, bytes) {
      sniffFormat(bytes);
      const r = await pool.decode({ bytes, formats: ['jpeg', 'png', 'webp'], minWidth: 1, minHeight: 1, maxPixels: 4_000_000, maxAspectRatio: 20, resizeTo: rng.chance(50) ? { width: 24, height: 32, geometry: 'letterbox' } : undefined });
      if (r.ok) {
        if (r.data.length !== r.width * r.height * 3) throw new Error(`decoded ${r.data.length} bytes for ${r.width} x ${r.height}`);
        return 'decoded';
      }
      if (!DECODE_FAILURES.has(r.kind) || typeof r.reason !== 'string') throw new Error(`unknown decode failure ${JSON.stringify(r)}`);
      return `refused: ${r.kind}`;
    },
  },
};

const target = TARGETS[values.target];
if (!target) {
  console.error(`unknown target ${values.target} (${Object.keys(TARGETS).join(', ')})`);
  process.exit(2);
}
const rng = new Rng(Number(values.seed));
const pool = values.target === 'image-header' ? new PreprocessPool({ threads: 1 }) : undefined;
const current = path.join(work, `current-${values.target}.${target.ext}`);
const corpus = await target.seeds();
const pending = [...corpus];
const seen = new Set();
const counts = { runs: 0, read: 0, refused: 0, crashes: 0 };
const deadline = Date.now() + Number(values.seconds) * 1000;
while (Date.now() < deadline) {
  const input = pending.pop() ?? mutate(rng.pick(corpus), rng.pick(corpus), rng, target.tokens);
  writeFileSync(current, input);
  counts.runs++;
  let answer;
  try {
    answer = await target.run(current, input);
    counts[answer.startsWith('refused') ? 'refused' : 'read']++;
  } catch (err) {
    counts.crashes++;
    const dir = path.join(work, 'crashes');
    mkdirSync(dir, { recursive: true });
    const kept = path.join(dir, `${values.target}-${createHash('sha256').update(input).digest('hex').slice(0, 16)}.${target.ext}`);
    writeFileSync(kept, input);
    console.error(`crash: ${values.target}: ${err?.stack ?? err}; input kept at ${kept}`);
    continue;
  }
  if (!seen.has(answer)) {
    seen.add(answer);
    if (corpus.length < 256) corpus.push(input);
  }
}
await pool?.destroy();
rmSync(current, { force: true });
console.log(JSON.stringify({ target: values.target, seconds: Number(values.seconds), ...counts, corpus: corpus.length, answers: seen.size }));
process.exitCode = counts.crashes > 0 ? 1 : 0;
