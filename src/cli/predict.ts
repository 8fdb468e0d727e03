/**
 * `motivnet predict`: one record per image (src/pipelines/predict.ts), as JSON lines, CSV or a
 * table; with `--faces detect`, each image's faces, each classified (one CSV row per face).
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';

import { Command, Option } from 'commander';

import { csvRow } from '../csv.js';
import { attentionMap, attentionOverlay, type AttentionMaps } from '../explain.js';
import { probabilitiesByLabel } from '../faces.js';
import { MotivNet } from '../model.js';
import type { Geometry, RgbImage } from '../images.js';
import { expandInputs, predictFileFaces, predictFiles, type FileFacesPrediction, type FilePrediction } from '../pipelines/predict.js';
import { PreprocessPool } from '../preprocess/pool.js';
import { SkipLog } from '../preprocess/skips.js';
import { addFaceDetectionOptions, faceDetectionOptions, facesArg, int, precisionOption } from './options.js';

type Format = 'jsonl' | 'csv' | 'table';

export function predictCommand(program: Command): void {
  addFaceDetectionOptions(
    program
      .command('predict')
      .description('classify images: one record per image with its label and per-class probabilities, or per face with --faces detect')
      .requiredOption('--weights <file>', 'weights (.safetensors or .pth)')
      .option('--model <preset|file>', 'model preset or JSON config', 'tiny')
      .requiredOption('--input <paths...>', 'image files or folders of images')
      .option('--faces <mode>', 'whole (the image as it is: the reference inference), detect (every face, each classified), or a box x,y,width,height in pixels', facesArg, 'whole')
      .addOption(new Option('--resize <geometry>', 'letterbox (the reference inference), stretch, or none (not with --faces detect)').choices(['letterbox', 'stretch', 'none']).default('letterbox'))
      .option('--top-k <k>', 'classes to list per image in table format', int('--top-k'), 3)
      .addOption(new Option('--format <format>', 'output format').choices(['jsonl', 'csv', 'table']).default('jsonl'))
      .option('--batch-size <n>', 'images per model call (with --faces detect: photographs decoded together, and faces per call)', int('--batch-size'), 8)
      .option('--fast-decode', "shrink large JPEGs while decoding: faster, but not the reference's pixels (not with --faces detect)")
      .option('--explain <dir>', 'write where the model looked: for each image (or face), a PNG of its predicted class\'s attention over it, into this folder')
      .option('--device <device>', 'cpu, cuda or cuda:N', 'cpu')
      .addOption(precisionOption()),
  ).action(async (opts) => {
    const detect = opts.faces === 'detect';
    if (detect && opts.resize === 'none') throw new Error("--faces detect fits each face's crop by letterbox or stretch, not none");
    if (opts.batchSize < 1) throw new Error(`--batch-size must be at least 1, got ${opts.batchSize}`);
    const files = expandInputs(opts.input as string[]);
    const model = await MotivNet.load({ model: opts.model, weights: opts.weights, device: opts.device, precision: opts.precision });
    const pool = new PreprocessPool();
    const skips = new SkipLog();
    const names = model.labels;
    const format = opts.format as Format;
    const explainDir = opts.explain as string | undefined;
    if (explainDir) mkdirSync(explainDir, { recursive: true });
    const explain = Boolean(explainDir);
    /** Writes the overlay of `cls` on `image` under a name of its own; returns its path. */
    const overlay = async (name: string, image: RgbImage, maps: AttentionMaps, cls: number, geometry: 'letterbox' | 'stretch') => {
      const file = path.join(explainDir!, uniqueName(`${name}.${names[cls]}`, '.png'));
      writeFileSync(file, await attentionOverlay(image, attentionMap(maps, 0, cls), maps, { geometry }));
      return file;
    };
    // Overlay names: the file as given, its folders joined by '_'; a name met before gets a
    // number, so no overlay overwrites another.
    const stem = (file: string) => file.replace(/^[./\\]+/, '').replace(/[/\\:]+/g, '_');
    const used = new Set<string>();
    const uniqueName = (base: string, extension: string) => {
      let name = `${base}${extension}`;
      for (let n = 2; used.has(name); n++) name = `${base}~${n}${extension}`;
      used.add(name);
      return name;
    };
    if (format === 'csv') console.log(csvRow(detect ? ['file', 'face', 'x', 'y', 'width', 'height', 'score', 'label', ...names] : ['file', 'label', ...names]));
    try {
      if (detect) {
        const run = predictFileFaces(model, pool, files, { geometry: opts.resize, batchSize: opts.batchSize, detection: faceDetectionOptions(opts), skips, explain });
        for await (const r of run) {
          const overlays = explain ? await Promise.all(r.faces.map((f, i) => overlay(`${stem(r.file)}.face${i + 1}`, f.view!, f.attention!, f.top.index, opts.resize))) : undefined;
          printFaces(r, names, format, opts.topK, overlays);
        }
      } else {
        const box = typeof opts.faces === 'object' ? opts.faces : undefined;
        const run = predictFiles(model, pool, files, { geometry: opts.resize as Geometry, batchSize: opts.batchSize, fastDecode: Boolean(opts.fastDecode), skips, box, explain });
        for await (const r of run) {
          // geometry none: the image is the input itself, so its fit is the identity.
          const fit = opts.resize === 'letterbox' ? 'letterbox' : 'stretch';
          const file = explain ? await overlay(stem(r.file), r.image!, r.attention!, r.top.index, fit) : undefined;
          printWhole(r, names, format, opts.topK, file);
        }
      }
    } finally {
      await pool.destroy();
      model.dispose();
    }
    for (const s of skips.entries) console.error(`skipped ${s.path}: ${s.reason}`);
    if (skips.count > 0) process.exitCode = 1;
  });
}

function topClasses(names: readonly string[], probabilities: Float32Array, k: number): string {
  const top = Array.from(probabilities, (p, c) => [names[c]!, p] as const).sort((a, b) => b[1] - a[1]).slice(0, k);
  return top.map(([n, p]) => `${n} ${(100 * p).toFixed(1)}%`).join('  ');
}

function printWhole(r: FilePrediction, names: readonly string[], format: Format, topK: number, overlay?: string): void {
  if (format === 'jsonl') {
    console.log(JSON.stringify({ file: r.file, label: r.top.label, probabilities: probabilitiesByLabel(names, r.probabilities, 0), logits: Array.from(r.logits), ...(overlay ? { overlay } : {}) }));
  } else if (format === 'csv') {
    console.log(csvRow([r.file, r.top.label, ...Array.from(r.probabilities, (p) => p.toFixed(6))]));
  } else {
    console.log(`${r.file}  ${topClasses(names, r.probabilities, topK)}`);
  }
}

const round = (v: number) => Math.round(v * 10) / 10;

function printFaces(r: FileFacesPrediction, names: readonly string[], format: Format, topK: number, overlays?: string[]): void {
  if (format === 'jsonl') {
    const faces = r.faces.map((f, i) => ({
      box: { x: round(f.box.x), y: round(f.box.y), width: round(f.box.width), height: round(f.box.height) },
      score: f.score,
      label: f.top.label,
      index: f.top.index,
      probabilities: probabilitiesByLabel(names, f.probabilities, 0),
      logits: Array.from(f.logits),
      keypoints: f.keypoints,
      crop: f.crop,
      ...(f.angle !== 0 ? { angle: f.angle } : {}),
      ...(overlays ? { overlay: overlays[i] } : {}),
    }));
    console.log(JSON.stringify({ file: r.file, width: r.width, height: r.height, faces }));
  } else if (format === 'csv') {
    // A file without a face still gets its row, so every file read is accounted for.
    if (r.faces.length === 0) console.log(csvRow([r.file, '', '', '', '', '', '', '', ...names.map(() => '')]));
    // Numbers as numbers (a box cut by the image's edge starts below 0), faces from 1 as in the table.
    r.faces.forEach((f, i) => {
      const box = [f.box.x, f.box.y, f.box.width, f.box.height].map(round);
      console.log(csvRow([r.file, i + 1, ...box, Math.round(f.score * 1e4) / 1e4, f.top.label, ...Array.from(f.probabilities, (p) => p.toFixed(6))]));
    });
  } else {
    if (r.faces.length === 0) console.log(`${r.file}  no face found`);
    r.faces.forEach((f, i) => {
      const at = `face ${i + 1} at ${Math.round(f.box.x)},${Math.round(f.box.y)} ${Math.round(f.box.width)}x${Math.round(f.box.height)}`;
      console.log(`${r.file}  ${at}  ${topClasses(names, f.probabilities, topK)}`);
    });
  }
}
