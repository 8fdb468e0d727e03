// What crop margin frames a face as a folder of face crops frames theirs: run it on AffectNet's
// images (`Manually_Annotated_Images/`, the crops MotivNet learned from) to measure the
// `--face-margin` that makes `--faces detect` crops look like them.
//
//   npm run build && node scripts/detector/measure-crop-margin.mjs DIR [--limit N]
//
// For each image (JPEG, PNG or WebP under DIR, sampled evenly up to --limit, default 500) with
// exactly one face, the detector's box against the image: the margin m for which the crop's side,
// the box's larger side times (1 + 2m), equals the image's shorter side, and where the box's
// centre lies in the image (fractions of its width and height). Prints the median and quartiles
// as JSON; `margin.median` is the measured `--face-margin`.
import { readdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import sharp from 'sharp';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const { detectFaces } = await import(path.join(root, 'dist/index.js'));

const args = process.argv.slice(2);
const dir = args.find((a) => !a.startsWith('--'));
const limitAt = args.indexOf('--limit');
const limit = limitAt >= 0 ? Number(args[limitAt + 1]) : 500;
if (!dir || !(limit >= 1)) {
  console.error('usage: node scripts/detector/measure-crop-margin.mjs DIR [--limit N]');
  process.exit(2);
}

function imagesUnder(folder) {
  return readdirSync(folder, { withFileTypes: true, recursive: true })
    .filter((e) => e.isFile() && /\.(jpe?g|png|webp)$/i.test(e.name))
    .map((e) => path.join(e.parentPath ?? e.path, e.name))
    .sort();
}

const all = imagesUnder(dir);
const step = Math.max(1, all.length / limit);
const files = Array.from({ length: Math.min(limit, all.length) }, (_, i) => all[Math.floor(i * step)]);
const margins = [];
const centresX = [];
const centresY = [];
let unreadable = 0;
let notOne = 0;
for (const file of files) {
  let image;
  try {
    const { data, info } = await sharp(file).rotate().removeAlpha().toColourspace('srgb').raw().toBuffer({ resolveWithObject: true });
    image = { data: new Uint8Array(data.buffer, data.byteOffset, data.length), width: info.width, height: info.height };
  } catch {
    unreadable++;
    continue;
  }
  const [faces] = await detectFaces(image);
  if (faces.length !== 1) {
    notOne++;
    continue;
  }
  const { box } = faces[0];
  const side = Math.max(box.width, box.height);
  margins.push((Math.min(image.width, image.height) / side - 1) / 2);
  centresX.push((box.x + box.width / 2) / image.width);
  centresY.push((box.y + box.height / 2) / image.height);
}

function quartiles(values) {
  if (values.length === 0) return undefined;
  const s = [...values].sort((a, b) => a - b);
  const at = (q) => Math.round(s[Math.min(s.length - 1, Math.floor(q * s.length))] * 1000) / 1000;
  return { q1: at(0.25), median: at(0.5), q3: at(0.75) };
}

console.log(
  JSON.stringify(
    {
      folder: dir,
      images: files.length,
      measured: margins.length,
      skipped: { unreadable, notOneFace: notOne },
      margin: quartiles(margins),
      boxCentre: { x: quartiles(centresX), y: quartiles(centresY) },
    },
    null,
    2,
  ),
);
if (margins.length === 0) process.exitCode = 1;
