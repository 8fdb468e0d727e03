/** `motivnet predict`: one record per image (src/pipelines/predict.ts), as JSON lines, CSV or a table. */
import { Command, Option } from 'commander';

import { csvRow } from '../csv.js';
import { MotivNet } from '../model.js';
import type { Geometry } from '../images.js';
import { expandInputs, predictFiles } from '../pipelines/predict.js';
import { PreprocessPool } from '../preprocess/pool.js';
import { SkipLog } from '../preprocess/skips.js';
import { int, precisionOption } from './options.js';

export function predictCommand(program: Command): void {
  program
    .command('predict')
    .description('classify images: one record per image with its label and per-class probabilities')
    .requiredOption('--weights <file>', 'weights (.safetensors or .pth)')
    .option('--model <preset|file>', 'model preset or JSON config', 'tiny')
    .requiredOption('--input <paths...>', 'image files or folders of images')
    .addOption(new Option('--resize <geometry>', 'letterbox (the reference inference), stretch, or none').choices(['letterbox', 'stretch', 'none']).default('letterbox'))
    .option('--top-k <k>', 'classes to list per image in table format', int('--top-k'), 3)
    .addOption(new Option('--format <format>', 'output format').choices(['jsonl', 'csv', 'table']).default('jsonl'))
    .option('--batch-size <n>', 'images per batch', int('--batch-size'), 8)
    .option('--fast-decode', "shrink large JPEGs while decoding: faster, but not the reference's pixels")
    .option('--device <device>', 'cpu, cuda or cuda:N', 'cpu')
    .addOption(precisionOption())
    .action(async (opts) => {
      const files = expandInputs(opts.input as string[]);
      const model = await MotivNet.load({ model: opts.model, weights: opts.weights, device: opts.device, precision: opts.precision });
      const pool = new PreprocessPool();
      const skips = new SkipLog();
      const names = model.labels;
      if (opts.format === 'csv') console.log(csvRow(['file', 'label', ...names]));
      try {
        const run = predictFiles(model, pool, files, { geometry: opts.resize as Geometry, batchSize: opts.batchSize, fastDecode: Boolean(opts.fastDecode), skips });
        for await (const r of run) {
          const probs = Array.from(r.probabilities);
          if (opts.format === 'jsonl') {
            console.log(JSON.stringify({ file: r.file, label: r.top.label, probabilities: Object.fromEntries(names.map((n, c) => [n, probs[c]])), logits: Array.from(r.logits) }));
          } else if (opts.format === 'csv') {
            console.log(csvRow([r.file, r.top.label, ...probs.map((p) => p.toFixed(6))]));
          } else {
            const top = probs.map((p, c) => [names[c]!, p] as const).sort((a, b) => b[1] - a[1]).slice(0, opts.topK);
            console.log(`${r.file}  ${top.map(([n, p]) => `${n} ${(100 * p).toFixed(1)}%`).join('  ')}`);
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
