/** `motivnet train`: a run from flags or a config file, or `--resume` of one. */
import { Command, Option } from 'commander';

import { readConfigFile, TrainConfigSchema, validateTrainConfig } from '../train/config.js';
import type { Metrics } from '../train/metrics.js';
import { resume, train } from '../train/trainer.js';
import { classes, int, metricsTable, num, precisionOption } from './options.js';

/** Flags (camelCase, as commander names them) that map one to one onto config keys. */
const CONFIG_KEYS = Object.keys(TrainConfigSchema.shape);

export function trainCommand(program: Command): void {
  const cmd = program
    .command('train')
    .description('train on a data set: balanced sample, 9:1 split, validation every epoch, test with the best weights')
    .option('--data <dir>', 'data folder: AffectNet as unpacked (Manually_Annotated_file_lists/, Manually_Annotated_Images/), training.csv + validation.csv, or class folders')
    .addOption(new Option('--format <format>', 'how labels are given (default: detected from --data)').choices(['affectnet', 'json', 'folders']))
    .option('--labels <file>', 'label file: AffectNet training CSV (default: found in --data) or the JSON label file')
    .option('--test-labels <file>', 'test label file (AffectNet CSV, default: validation.csv found in --data; or JSON)')
    .option('--test-data <dir>', 'test folder, for the folders format')
    .option('--images <dir>', 'folder the label files are relative to (default: found in --data)')
    .option('--classes <n>', "8 (with contempt, the paper) or 7 (without); default: the weights' head, else 8", classes)
    .option('--crop-to-face', 'crop to the face box of the AffectNet CSV')
    .addOption(new Option('--recipe <name>', 'paper (default): batch 2 x 8, 30 epochs, balanced 9:1, best by accuracy; upstream-code: batch 32, 10 epochs, all images 80/20 at random, best by loss, test on the final weights').choices(['paper', 'upstream-code']))
    .option('--balanced', 'balanced sampling: the smallest class size from every class (paper recipe)')
    .option('--no-balanced', 'train on every image (upstream-code recipe)')
    .option('--cap-per-class <n>', 'sample at most this many images per class', int('--cap-per-class'))
    .option('--validation-fraction <x>', 'share of the sample held out for validation (paper 0.1, upstream-code 0.2)', num('--validation-fraction'))
    .option('--stratified-split', 'hold out that share of every class (paper recipe)')
    .option('--no-stratified-split', 'hold it out of the whole set at random (upstream-code recipe)')
    .addOption(new Option('--test-weights <which>', 'test with the best epoch\'s weights (paper) or the final ones (upstream-code)').choices(['best', 'final']))
    .option('--model <preset|file>', 'tiny, small, sapiens-0.3b, sapiens-0.6b, sapiens-1b, sapiens-2b, or a JSON model config (default tiny)')
    .option('--weights <file>', 'initial weights (.safetensors or .pth; a Sapiens backbone loads the encoder only; a preset takes its head from them)')
    .option('--encoder-only', 'load only the encoder from --weights')
    .addOption(new Option('--init <scheme>', 'how a fresh model starts: upstream (default, as the PyTorch code) or vit (truncated normal 0.02)').choices(['upstream', 'vit']))
    .option('--epochs <n>', 'epochs (paper 30, upstream-code 10)', int('--epochs'))
    .option('--batch-size <n>', 'images per micro-batch (paper 2, upstream-code 32)', int('--batch-size'))
    .option('--accumulate <k>', 'micro-batches per optimizer step (paper 8, upstream-code 1)', int('--accumulate'))
    .option('--encoder-lr <x>', 'encoder learning rate (default 1e-8)', num('--encoder-lr'))
    .option('--decoder-lr <x>', 'decoder learning rate (default 1e-5)', num('--decoder-lr'))
    .option('--encoder-weight-decay <x>', 'AdamW weight decay of the encoder (default 0.01)', num('--encoder-weight-decay'))
    .option('--decoder-weight-decay <x>', 'AdamW weight decay of the decoder (default 0.01)', num('--decoder-weight-decay'))
    .option('--exclude-norm-bias-pos-from-decay', 'no weight decay on biases, norms and pos_embed (Sapiens recipe)')
    .option('--layer-decay <x>', 'layer-wise lr decay of the encoder, e.g. 0.85 (Sapiens recipe)', num('--layer-decay'))
    .option('--clip-grad-norm <x>', 'clip the global gradient norm, e.g. 1.0 (Sapiens recipe)', num('--clip-grad-norm'))
    .addOption(new Option('--schedule <kind>', 'learning-rate schedule (default cosine-restarts)').choices(['cosine-restarts', 'constant']))
    .option('--t0 <n>', 'epochs of the first cosine cycle (default 10)', int('--t0'))
    .option('--t-mult <n>', 'growth of each later cycle (default 1)', int('--t-mult'))
    .option('--eta-min <x>', 'lowest learning rate (default 0)', num('--eta-min'))
    .addOption(new Option('--schedule-per <unit>', 'step the cosine per epoch (the reference) or per step').choices(['epoch', 'step']))
    .option('--warmup-steps <n>', 'linear warm-up over this many optimizer steps (default 0)', int('--warmup-steps'))
    .option('--flip <p>', 'probability of mirroring a training image (default 0)', num('--flip'))
    .addOption(new Option('--metric <name>', 'validation metric that picks the best checkpoint (paper accuracy, upstream-code loss)').choices(['accuracy', 'auroc', 'f1', 'loss']))
    .option('--patience <n>', 'stop after this many epochs without a better metric (default 0: never)', int('--patience'))
    .option('--out <rundir>', 'run folder: config, metrics, plots, checkpoints')
    .option('--config <file>', 'a JSON or YAML file with any of these settings (flags win)')
    .option('--device <device>', 'cpu (default), cuda or cuda:N')
    .addOption(precisionOption({ training: true }))
    .option('--seed <s>', 'seed of the sample, split, order, initial weights and dropout (default 0)', int('--seed'))
    .option('--threads <n>', 'preprocessing workers (default: the number of cores)', int('--threads'))
    .option('--prefetch <n>', 'batches decoded ahead (default 2)', int('--prefetch'))
    .option('--max-pixels <n>', 'skip images with more pixels than this (default 67108864)', int('--max-pixels'))
    .option('--fast-decode', "shrink large JPEGs while decoding: faster, but not the reference's pixels")
    .option('--resume <rundir>', 'continue the interrupted run in this folder, exactly where it stopped')
    .action(async (opts: Record<string, unknown>) => {
      const controller = new AbortController();
      let signals = 0;
      const onSignal = (sig: NodeJS.Signals) => {
        signals++;
        if (signals > 1) {
          console.error(`\n${sig} again: exiting without saving`);
          process.exit(130);
        }
        console.error(`\n${sig}: saving the last checkpoint, then exiting (press again to quit at once)`);
        controller.abort();
      };
      process.on('SIGINT', onSignal);
      process.on('SIGTERM', onSignal);
      const hooks = { signal: controller.signal };
      let result;
      if (typeof opts.resume === 'string') {
        const extra = Object.keys(opts).filter((k) => k !== 'resume');
        if (extra.length) throw new Error(`--resume continues a run with its saved config: drop ${extra.map((k) => '--' + k.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase())).join(', ')}`);
        result = await resume(opts.resume, hooks);
      } else {
        const fromFile = typeof opts.config === 'string' ? readConfigFile(opts.config) : {};
        const flags = Object.fromEntries(Object.entries(opts).filter(([k, v]) => k !== 'config' && v !== undefined && CONFIG_KEYS.includes(k)));
        const source = typeof opts.config === 'string' ? `${opts.config} with the command-line flags` : 'command-line flags';
        const cfg = validateTrainConfig({ ...fromFile, ...flags }, source);
        result = await train(cfg, hooks);
      }
      if (result.status === 'interrupted') process.exitCode = 130;
      else printSummary(result.test, result.runDir, result.bestEpoch);
    });
  cmd.addHelpText('after', '\nDefaults follow the MotivNet paper (--recipe paper): AdamW, encoder lr 1e-8, decoder lr 1e-5, batch 2 x 8 accumulated,\n30 epochs, cosine annealing with warm restarts (T_0 10) stepped per epoch, balanced sampling, 9:1 split.\n--recipe upstream-code follows the released training code instead; any flag overrides the recipe.');
}

function printSummary(test: Metrics | undefined, runDir: string, bestEpoch: number | null): void {
  if (test) console.log(`\n${metricsTable(test)}`);
  console.log(`\nrun folder: ${runDir} (best epoch ${bestEpoch === null ? '-' : bestEpoch + 1}; curves.png, confusion.png, summary.json, checkpoints/)`);
}
