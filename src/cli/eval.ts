/** `motivnet eval`: weights on a labelled set, all of it (src/pipelines/evaluate.ts). */
import { Command, Option } from 'commander';

import { evaluateData } from '../pipelines/evaluate.js';
import { classes, int, metricsTable, precisionOption } from './options.js';

export function evalCommand(program: Command): void {
  program
    .command('eval')
    .description('evaluate weights on a labelled set (all of it, no sampling)')
    .requiredOption('--weights <file>', 'weights (.safetensors or .pth)')
    .option('--model <preset|file>', 'model preset or JSON config (a preset takes its head from the weights)', 'tiny')
    .requiredOption('--data <dir>', 'data folder: AffectNet as unpacked, validation.csv at the top, or class folders')
    .addOption(new Option('--format <format>', 'how labels are given (default: detected from --data)').choices(['affectnet', 'json', 'folders']))
    .option('--labels <file>', 'label file (AffectNet CSV, default: the validation list found in --data; or JSON)')
    .option('--images <dir>', 'folder the label file is relative to (default: found in --data)')
    .option('--classes <n>', "8 or 7 (default: the model's)", classes)
    .option('--crop-to-face', 'crop to the AffectNet face box')
    .option('--batch-size <n>', 'images per batch', int('--batch-size'), 8)
    .option('--fast-decode', "shrink large JPEGs while decoding: faster, but not the reference's pixels")
    .option('--device <device>', 'cpu, cuda or cuda:N', 'cpu')
    .addOption(precisionOption())
    .option('--json', 'print the metrics as JSON')
    .action(async (opts) => {
      const r = await evaluateData({
        model: { model: opts.model, weights: opts.weights, device: opts.device, precision: opts.precision },
        data: opts.data,
        format: opts.format,
        labels: opts.labels,
        images: opts.images,
        classes: opts.classes,
        cropToFace: Boolean(opts.cropToFace),
        batchSize: opts.batchSize,
        fastDecode: Boolean(opts.fastDecode),
      });
      const { skipped, ...metrics } = r;
      if (opts.json) console.log(JSON.stringify({ ...metrics, skipped: skipped.entries }, null, 2));
      else console.log(`labels: ${r.labels}\n${r.images} images, ${skipped.summary()}\n${metricsTable(r)}`);
    });
}
