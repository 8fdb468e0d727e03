#!/usr/bin/env node
/**
 * The `motivnet` command line: train, eval, predict, convert, serve, synth. Flags are validated here, at the
 * edge, with the same schema as config files; the work is the library's.
 */
import { readdirSync, realpathSync, statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

import { Command, InvalidArgumentError, Option } from 'commander';

import { IMAGE_EXTENSIONS } from './data/folders.js';
import type { ClassCount } from './data/types.js';
import { nativeCall } from './errors.js';
import { MotivNet, type Geometry } from './model.js';
import { native } from './native.js';
import { PreprocessPool } from './preprocess/pool.js';
import { SkipLog } from './preprocess/skips.js';
import { batches } from './preprocess/batcher.js';
import { readConfigFile, TrainConfigSchema, validateTrainConfig } from './train/config.js';
import { detectFormat } from './data/layout.js';
import { dataSource, readSet } from './train/dataset.js';
import { evaluateSet } from './train/evaluate.js';
import type { Metrics } from './train/metrics.js';
import { Progress } from './train/progress.js';
import { resume, train, TrainingStopped } from './train/trainer.js';

const num = (what: string) => (v: string) => {
  const n = Number(v);
  if (v.trim() === '' || !Number.isFinite(n)) throw new InvalidArgumentError(`${what} must be a number, got '${v}'`);
  return n;
};
/** `--precision` of every command that loads a model; unset means the model's default, f32. */
const precisionOption = () =>
  new Option('--precision <p>', 'compute dtype: f32 (default), or bf16 on CUDA (weights stay f32)').choices(['f32', 'bf16']);

const int = (what: string) => (v: string) => {
  const n = num(what)(v);
  if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError(`${what} must be a whole number, got '${v}'`);
  return n;
};
const classes = (v: string): ClassCount => {
  if (v !== '7' && v !== '8') throw new InvalidArgumentError(`must be 7 or 8, got '${v}'`);
  return Number(v) as ClassCount;
};

/** Flags (camelCase, as commander names them) that map one to one onto config keys. */
const CONFIG_KEYS = Object.keys(TrainConfigSchema.shape);

function trainCommand(program: Command): void {
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
    .addOption(precisionOption())
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

function metricsTable(m: Metrics): string {
  const pct = (v: number) => `${(100 * v).toFixed(2)}%`;
  return [
    'accuracy   AUROC      F1         precision  recall     loss',
    [pct(m.accuracy), pct(m.auroc), pct(m.f1), pct(m.precision), pct(m.recall), m.loss.toFixed(3)].map((v) => v.padEnd(10)).join(' '),
  ].join('\n');
}

function evalCommand(program: Command): void {
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
      const modelConfig = await MotivNet.resolveConfig({ model: opts.model, weights: opts.weights, numClasses: opts.classes });
      const n = modelConfig.head.numClasses;
      if (n !== 7 && n !== 8) throw new Error(`the model has ${n} classes; evaluating needs the 7- or 8-class emotion label set`);
      const format = opts.format ?? detectFormat(opts.data);
      // The labelled set is --labels, or the data folder's test list (AffectNet's validation list).
      const settings = { data: opts.data, format, labels: opts.labels, testLabels: opts.labels, testData: opts.data, images: opts.images, classes: n as ClassCount, cropToFace: Boolean(opts.cropToFace) };
      const set = await readSet(dataSource(settings), 'test', settings);
      if (!set) throw new Error(`no labelled set found in ${opts.data}: give --labels`);
      const model = await MotivNet.load({ model: opts.model, weights: opts.weights, numClasses: n, device: opts.device, precision: opts.precision });
      const pool = new PreprocessPool();
      const skips = new SkipLog();
      let m: Metrics;
      try {
        m = await evaluateSet(model, pool, set.samples, { batchSize: opts.batchSize, fastDecode: Boolean(opts.fastDecode), skips });
      } finally {
        await pool.destroy();
        model.dispose();
      }
      const images = m.confusion.flat().reduce((a, b) => a + b, 0);
      if (opts.json) console.log(JSON.stringify({ images, labels: set.source, skipped: skips.entries, ...m }, null, 2));
      else console.log(`labels: ${set.source}\n${images} images, ${skips.summary()}\n${metricsTable(m)}`);
    });
}

/** Files named on the command line, with folders expanded to the images in them (sorted). */
function expandInputs(inputs: string[]): string[] {
  return inputs.flatMap((p) => {
    let st;
    try {
      st = statSync(p);
    } catch {
      return [p]; // reported as missing when decoded
    }
    if (!st.isDirectory()) return [p];
    return readdirSync(p)
      .filter((f) => IMAGE_EXTENSIONS.has(path.extname(f).toLowerCase()))
      .sort()
      .map((f) => path.join(p, f));
  });
}

function predictCommand(program: Command): void {
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
      if (opts.format === 'csv') console.log(['file', 'label', ...names].join(','));
      try {
        const samples = files.map((f) => ({ path: path.resolve(f), relPath: f, label: 0 }));
        const { inputHeight, inputWidth } = model.config.encoder;
        for await (const b of batches(samples, { batchSize: opts.batchSize, decode: (t) => pool.decode(t), minWidth: inputWidth, minHeight: inputHeight, fastDecode: Boolean(opts.fastDecode), skips })) {
          const r = await model.predict(b, { geometry: opts.resize as Geometry });
          b.samples.forEach((s, i) => {
            const probs = Array.from(r.probabilities.subarray(i * r.numClasses, (i + 1) * r.numClasses));
            const label = r.top[i]!.label;
            if (opts.format === 'jsonl') {
              const logits = Array.from(r.logits.subarray(i * r.numClasses, (i + 1) * r.numClasses));
              console.log(JSON.stringify({ file: s.relPath, label, probabilities: Object.fromEntries(names.map((n, c) => [n, probs[c]])), logits }));
            } else if (opts.format === 'csv') {
              console.log([JSON.stringify(s.relPath), label, ...probs.map((p) => p.toFixed(6))].join(','));
            } else {
              const top = probs.map((p, c) => [names[c]!, p] as const).sort((a, b) => b[1] - a[1]).slice(0, opts.topK);
              console.log(`${s.relPath}  ${top.map(([n, p]) => `${n} ${(100 * p).toFixed(1)}%`).join('  ')}`);
            }
          });
        }
      } finally {
        await pool.destroy();
        model.dispose();
      }
      for (const s of skips.entries) console.error(`skipped ${s.path}: ${s.reason}`);
      if (skips.count > 0) process.exitCode = 1;
    });
}

function convertCommand(program: Command): void {
  program
    .command('convert')
    .description('convert a .pth checkpoint (MotivNet or Sapiens layout) to safetensors with the reference names')
    .requiredOption('--input <file>', '.pth or .safetensors file')
    .requiredOption('--output <file>', 'the .safetensors file to write')
    .addHelpText('after', '\nTorchScript and torch.export archives need PyTorch: use scripts/convert_torchscript.py first.')
    .action(async (opts) => {
      const r = await nativeCall(() => native.convertWeights(opts.input, opts.output));
      console.log(`wrote ${r.written} tensors to ${opts.output}${r.renamed.length ? `, ${r.renamed.length} renamed` : ''}${r.ignored.length ? `, ${r.ignored.length} left out (${r.ignored.slice(0, 5).join(', ')}${r.ignored.length > 5 ? ', ...' : ''})` : ''}`);
    });
}

function serveCommand(program: Command): void {
  program
    .command('serve')
    .description('serve predictions over HTTP: POST /v1/predict, GET /v1/model, GET /healthz')
    .requiredOption('--weights <file>', 'weights (.safetensors or .pth)')
    .option('--model <preset|file>', 'model preset or JSON config', 'tiny')
    .option('--port <p>', 'port (0: any free port)', int('--port'), 8080)
    .option('--host <h>', 'address to listen on (0.0.0.0 for every interface)', '127.0.0.1')
    .option('--device <device>', 'cpu, cuda or cuda:N', 'cpu')
    .addOption(precisionOption())
    .addOption(new Option('--resize <geometry>', 'default geometry: letterbox (the reference inference) or stretch').choices(['letterbox', 'stretch']).default('letterbox'))
    .option('--max-batch <n>', 'most images per model call', int('--max-batch'), 8)
    .option('--max-wait-ms <ms>', 'longest an image waits for its batch to fill', int('--max-wait-ms'), 5)
    .option('--max-queue <n>', 'most requests held at once; beyond it 429 with Retry-After', int('--max-queue'), 256)
    .option('--max-body-mb <mb>', 'largest request body', num('--max-body-mb'), 10)
    .option('--max-pixels <n>', 'largest image, in pixels', int('--max-pixels'), 40_000_000)
    .option('--timeout-ms <ms>', 'longest a prediction may take, queueing included; then 503', int('--timeout-ms'), 30_000)
    .option('--threads <n>', 'decoding workers (default: the number of cores)', int('--threads'))
    .option('--fast-decode', "shrink large JPEGs while decoding: faster and leaner, but not the reference's pixels")
    .option('--log', 'log every request (JSON lines on stdout)')
    .action(async (opts) => {
      const { EmotionClassifier } = await import('./serve/classifier.js');
      const { createServer } = await import('./serve/server.js');
      for (const [flag, v] of [['--max-batch', opts.maxBatch], ['--max-queue', opts.maxQueue], ['--timeout-ms', opts.timeoutMs], ['--threads', opts.threads ?? 1]] as const) {
        if (v < 1) throw new Error(`${flag} must be at least 1, got ${v}`);
      }
      if (!(opts.maxBodyMb > 0)) throw new Error(`--max-body-mb must be positive, got ${opts.maxBodyMb}`);
      const classifier = await EmotionClassifier.create({
        model: { model: opts.model, weights: opts.weights, device: opts.device, precision: opts.precision },
        maxBatchSize: opts.maxBatch,
        maxWaitMs: opts.maxWaitMs,
        maxQueue: opts.maxQueue,
        maxPixels: opts.maxPixels,
        decodeThreads: opts.threads,
        geometry: opts.resize,
        fastDecode: Boolean(opts.fastDecode),
      });
      const app = await createServer(classifier, {
        modelName: String(opts.model),
        bodyLimit: Math.round(opts.maxBodyMb * 1024 * 1024),
        timeoutMs: opts.timeoutMs,
        logger: Boolean(opts.log),
      });
      let stopping: Promise<void> | undefined;
      const stop = (sig: NodeJS.Signals) => {
        if (stopping) {
          console.error(`${sig} again: exiting without waiting`);
          process.exit(130);
        }
        console.error(`${sig}: finishing the requests in flight, then exiting`);
        stopping = (async () => {
          await app.close();
          await classifier.close();
        })();
      };
      process.on('SIGTERM', stop);
      process.on('SIGINT', stop);
      try {
        const url = await app.listen({ port: opts.port, host: opts.host });
        const n = classifier.model.parameterCounts().total;
        const size = n >= 1e6 ? `${(n / 1e6).toFixed(1)} M` : n.toLocaleString('en-US');
        console.error(`motivnet serve: ${opts.model} (${size} parameters) listening on ${url}`);
      } catch (err) {
        await classifier.close();
        throw err;
      }
      await new Promise<void>((resolve) => app.server.once('close', () => resolve()));
      await stopping;
    });
}

function synthCommand(program: Command): void {
  program
    .command('synth')
    .description('generate the procedural face data set (AffectNet layout: images/, training.csv, validation.csv)')
    .requiredOption('--out <dir>', 'where to write it')
    .option('--seed <s>', 'seed: the same seed writes the same bytes', int('--seed'), 0)
    .option('--train-per-class <n>', 'training images of the rarest class (contempt); the others follow AffectNet\'s ratios', int('--train-per-class'), 120)
    .option('--test-per-class <m>', 'test images per class', int('--test-per-class'), 40)
    .option('--size <WxH>', 'image size in pixels', '96x96')
    .option('--imbalance <x>', 'exponent on AffectNet\'s class ratios: 1 = its proportions, 0.5 = their square root, 0 = balanced', num('--imbalance'), 1)
    .action(async (opts) => {
      const m = /^(\d+)x(\d+)$/.exec(opts.size);
      if (!m) throw new Error(`--size must look like 96x96, got '${opts.size}'`);
      const { synthesize, plannedTotal } = await import('./synth/generate.js');
      const options = { out: opts.out, seed: opts.seed, trainPerClass: opts.trainPerClass, testPerClass: opts.testPerClass, width: Number(m[1]), height: Number(m[2]), imbalance: opts.imbalance };
      const progress = new Progress({ label: 'synth', total: plannedTotal(options) });
      const r = await synthesize(options, (done) => progress.update(done, done, {}));
      progress.finish();
      console.log(`wrote ${r.train.reduce((a, b) => a + b, 0)} training images (${r.train.join(', ')} per class) and ${r.test.reduce((a, b) => a + b, 0)} test images to ${opts.out}`);
    });
}

export async function main(argv: string[]): Promise<void> {
  const program = new Command('motivnet')
    .description('MotivNet facial emotion recognition: train, evaluate, predict, serve, convert weights')
    .showHelpAfterError()
    .configureOutput({ outputError: (str, write) => write(str) });
  trainCommand(program);
  evalCommand(program);
  predictCommand(program);
  convertCommand(program);
  serveCommand(program);
  synthCommand(program);
  try {
    await program.parseAsync(argv);
  } catch (err) {
    const e = err as Error;
    console.error(e instanceof TrainingStopped ? e.message : `motivnet: ${e.message}`);
    process.exitCode = e instanceof TrainingStopped ? 3 : 1;
  }
}

// Run when executed (also through the npm bin link), not when imported by tests.
const invoked = process.argv[1] ? realpathSync(process.argv[1]) : '';
if (invoked === realpathSync(fileURLToPath(import.meta.url))) {
  await main(process.argv);
}
