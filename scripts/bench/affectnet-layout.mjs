// AffectNet's manually annotated set as its owners unpack it, at full size, with placeholder
// images: `Manually_Annotated_file_lists/training.csv` (header row, 287,651 rows in the
// class proportions of the real file) and `validation.csv` (no header, 500 per class), image
// paths `NNN/<56 hex>.jpg` under `Manually_Annotated_Images/` in about a thousand folders,
// 136 landmark coordinates per row as the real lists carry, and the same training entries as
// the reference's JSON label file. Images are empty files unless `images` is false: the
// readers only resolve paths, and a real layout has the files.
import { existsSync, mkdirSync, readFileSync, writeFileSync, createWriteStream } from 'node:fs';
import path from 'node:path';

/** Training rows per expression code 0-7 in AffectNet's manually annotated training list. */
export const AFFECTNET_TRAINING_COUNTS = [74874, 134415, 25459, 14090, 6378, 3803, 24882, 3750];
export const AFFECTNET_VALIDATION_PER_CLASS = 500;
const HEADER = 'subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal';
const FOLDERS = 1000;

function generator(seed) {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 4294967296;
  };
}

function hexName(rand) {
  let out = '';
  for (let i = 0; i < 7; i++) out += Math.floor(rand() * 4294967296).toString(16).padStart(8, '0');
  return out;
}

function landmarks(rand, x, y, size) {
  const parts = [];
  for (let i = 0; i < 68; i++) parts.push((x + rand() * size).toFixed(2), (y + rand() * size).toFixed(2));
  return parts.join(';');
}

async function writeList(file, rows, header) {
  const out = createWriteStream(file);
  const write = (text) => (out.write(text) ? Promise.resolve() : new Promise((r) => out.once('drain', r)));
  if (header) await write(HEADER + '\n');
  let chunk = '';
  for (const r of rows) {
    chunk += r + '\n';
    if (chunk.length > 1 << 20) {
      await write(chunk);
      chunk = '';
    }
  }
  await write(chunk);
  await new Promise((resolve, reject) => out.end((err) => (err ? reject(err) : resolve())));
}

/**
 * Writes the layout under `root` once (a marker file records what was written) and returns
 * its paths. `images: false` leaves the image files out.
 */
export async function affectNetLayout(root, { images = true, seed = 7 } = {}) {
  const lists = path.join(root, 'Manually_Annotated_file_lists');
  const imagesDir = path.join(root, 'Manually_Annotated_Images');
  const paths = {
    root,
    training: path.join(lists, 'training.csv'),
    validation: path.join(lists, 'validation.csv'),
    json: path.join(root, 'training.json'),
    images: imagesDir,
  };
  const marker = path.join(root, 'layout.json');
  const wanted = JSON.stringify({ version: 1, images, seed, counts: AFFECTNET_TRAINING_COUNTS });
  if (existsSync(marker) && readFileSync(marker, 'utf8') === wanted) return paths;
  mkdirSync(lists, { recursive: true });
  const rand = generator(seed);
  const entry = (code) => {
    const rel = `${1 + Math.floor(rand() * FOLDERS)}/${hexName(rand)}.jpg`;
    const size = 100 + Math.floor(rand() * 400);
    const x = Math.floor(rand() * 80);
    const y = Math.floor(rand() * 80);
    const row = `${rel},${x},${y},${size},${size},${landmarks(rand, x, y, size)},${code},${(rand() * 2 - 1).toFixed(6)},${(rand() * 2 - 1).toFixed(6)}`;
    return { rel, row };
  };
  const training = [];
  AFFECTNET_TRAINING_COUNTS.forEach((n, code) => {
    for (let i = 0; i < n; i++) training.push({ code, ...entry(code) });
  });
  // The real list is not sorted by class: interleave deterministically.
  for (let i = training.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [training[i], training[j]] = [training[j], training[i]];
  }
  const validation = [];
  for (let code = 0; code < 8; code++) for (let i = 0; i < AFFECTNET_VALIDATION_PER_CLASS; i++) validation.push(entry(code));
  await writeList(paths.training, training.map((e) => e.row), true);
  await writeList(paths.validation, validation.map((e) => e.row), false);
  const byClass = {};
  for (const e of training) (byClass[e.code] ??= []).push(e.rel);
  writeFileSync(paths.json, JSON.stringify(byClass, null, 1));
  if (images) {
    for (let f = 1; f <= FOLDERS; f++) mkdirSync(path.join(imagesDir, String(f)), { recursive: true });
    for (const e of [...training, ...validation]) writeFileSync(path.join(imagesDir, e.rel), '');
  } else {
    mkdirSync(imagesDir, { recursive: true });
  }
  writeFileSync(marker, wanted);
  return paths;
}
