/**
 * The training loop: epochs over the balanced, split sample in a seeded order; micro-batches
 * with gradient accumulation; two learning rates on a schedule; validation every epoch; the
 * best checkpoint by a chosen metric; early stopping; the test set with the best weights.
 *
 * Every checkpoint holds the whole state (weights, optimizer, dropout RNG, pending gradients
 * in the core; epoch, position in the epoch's order, best so far here), written atomically in
 * one file, so `resume` continues exactly where a run stopped: an interrupted and resumed run
 * ends with the same weights as an uninterrupted one.
 */
import { appendFileSync } from 'node:fs';
import path from 'node:path';

import { epochOrder, formatSampleReport } from '../data/sample.js';
import { createRng } from '../data/random.js';
import { emotionLabels } from '../emotions.js';
import { MotivNetError } from '../errors.js';
import { cpuBf16Available } from '../config.js';
import { MotivNet } from '../model.js';
import { batches } from '../preprocess/batcher.js';
import { PreprocessPool } from '../preprocess/pool.js';
import { SkipLog } from '../preprocess/skips.js';
import { validateTrainConfig, type RunConfig } from './config.js';
import { describeSource, loadDataset, resolveRunConfig, type Dataset } from './dataset.js';
import { EvaluationAborted, evaluateSet } from './evaluate.js';
import type { Metrics } from './metrics.js';
import { writeConfusion, writeCurves } from './plots.js';
import { Progress } from './progress.js';
import { RunFolder, type EpochRecord } from './run-folder.js';
import { learningRate, type ScheduleConfig } from './schedule.js';

/** Where a run stands: stored with every checkpoint. */
export interface RunState {
  version: 1;
  /** The epoch in progress (0-based) and how many of its order's slots are done. */
  epoch: number;
  position: number;
  /** Running sums of the epoch's training loss and accuracy so far. */
  trainLossSum: number;
  trainCorrect: number;
  trainSeen: number;
  best: { epoch: number; value: number } | null;
  /** Epochs since the best one (early stopping). */
  stale: number;
  finished: boolean;
  /** Optimizer steps taken in the run (drives warm-up and per-step schedules). */
  globalStep: number;
}

export interface TrainHooks {
  /** Interrupts the run (Ctrl-C): `last` is saved and train() resolves with status 'interrupted'. */
  signal?: AbortSignal;
  /** Interrupt after this many micro-batches in this call (tests of resume). */
  stopAfterMicroBatches?: number;
  log?: (line: string) => void;
  progressStream?: NodeJS.WriteStream;
}

export interface TrainResult {
  status: 'completed' | 'early-stopped' | 'interrupted';
  runDir: string;
  bestEpoch: number | null;
  test?: Metrics;
  validation?: Metrics;
}

/** A run that cannot go on (a non-finite loss): the message names the step and the checkpoint kept. */
export class TrainingStopped extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'TrainingStopped';
  }
}

const higherIsBetter = (metric: RunConfig['metric']) => metric !== 'loss';

function scheduleOf(cfg: RunConfig): ScheduleConfig {
  return { kind: cfg.schedule, t0: cfg.t0, tMult: cfg.tMult, etaMin: cfg.etaMin, per: cfg.schedulePer, warmupSteps: cfg.warmupSteps };
}

function freshState(): RunState {
  return { version: 1, epoch: 0, position: 0, trainLossSum: 0, trainCorrect: 0, trainSeen: 0, best: null, stale: 0, finished: false, globalStep: 0 };
}

function argmaxCorrect(logits: Float32Array, labels: Int32Array, classes: number): number {
  let correct = 0;
  for (let i = 0; i < labels.length; i++) {
    let best = 0;
    for (let c = 1; c < classes; c++) if (logits[i * classes + c]! > logits[i * classes + best]!) best = c;
    if (best === labels[i]) correct++;
  }
  return correct;
}

/** Starts a run in `config.out` (which must not hold one already). */
export async function train(input: unknown, hooks: TrainHooks = {}): Promise<TrainResult> {
  const { existsSync } = await import('node:fs');
  const given = validateTrainConfig(input, 'training config');
  if (existsSync(path.join(given.out, 'checkpoints', 'last.safetensors'))) {
    throw new Error(`${given.out} already holds a run (checkpoints/last.safetensors): resume it with --resume ${given.out}, or choose another --out`);
  }
  // The format and the label set are settled before anything is written, so config.json holds them.
  const cfg = await resolveRunConfig(given);
  const run = new RunFolder(cfg.out);
  return holding(run, hooks, () => {
    run.writeJson('config.json', cfg);
    return execute(cfg, run, null, hooks);
  });
}

/** Runs `work` with the run folder locked to this process, the lock given up after. */
async function holding<T>(run: RunFolder, hooks: TrainHooks, work: () => Promise<T>): Promise<T> {
  const log = hooks.log ?? ((line: string) => console.log(line));
  for (const note of run.lock()) log(note);
  try {
    return await work();
  } finally {
    run.unlock();
  }
}

/** Continues the run in `runDir` from its `last` checkpoint, with the config it was started with. */
export async function resume(runDir: string, hooks: TrainHooks = {}): Promise<TrainResult> {
  const { existsSync } = await import('node:fs');
  if (!existsSync(path.join(runDir, 'config.json'))) {
    throw new Error(`${runDir}: not a run folder (no config.json)`);
  }
  const run = new RunFolder(runDir);
  return holding(run, hooks, async () => {
    let saved: unknown;
    try {
      saved = run.readJson('config.json');
    } catch (err) {
      throw new Error(`${runDir}: not a run folder (cannot read config.json: ${(err as Error).message})`);
    }
    const cfg = await resolveRunConfig(validateTrainConfig(saved, path.join(runDir, 'config.json')));
    return execute(cfg, run, run.last, hooks);
  });
}

async function execute(cfg: RunConfig, run: RunFolder, resumeFrom: string | null, hooks: TrainHooks): Promise<TrainResult> {
  const log = hooks.log ?? ((line: string) => console.log(line));
  // Refused before any data is read (loading the model would refuse it too, after).
  if (cfg.precision === 'bf16' && !cfg.device.startsWith('cuda') && !cpuBf16Available()) {
    throw new Error("precision bf16 trains on a CUDA device or on a CPU with AVX512_BF16 (Intel Xeon of the 4th generation or later, AMD Zen 4 or later); this CPU has none, or MOTIVNET_BF16=off: pick f32 or --device cuda");
  }
  const data = await loadDataset(cfg);
  // model.json records the exact model (its head may have come from the weights), so a resumed
  // run builds the same one before restoring its state.
  const { existsSync } = await import('node:fs');
  const resolvedModel = run.file('model.json');
  const model = await MotivNet.load({
    model: resumeFrom && existsSync(resolvedModel) ? resolvedModel : cfg.model,
    weights: resumeFrom ? undefined : cfg.weights,
    encoderOnly: cfg.encoderOnly,
    numClasses: cfg.classes,
    init: cfg.init,
    device: cfg.device,
    precision: cfg.precision,
    forTraining: true,
    seed: cfg.seed,
    optimizer: {
      encoderWeightDecay: cfg.encoderWeightDecay,
      decoderWeightDecay: cfg.decoderWeightDecay,
      maxGradNorm: cfg.clipGradNorm,
      excludeNormBiasPosFromDecay: cfg.excludeNormBiasPosFromDecay,
      encoderLayerDecay: cfg.layerDecay,
    },
  });
  let state = freshState();
  if (resumeFrom) {
    const extra = (await model.loadState(resumeFrom)) as RunState | undefined;
    if (!extra || extra.version !== 1) throw new Error(`${resumeFrom}: no run state in this checkpoint`);
    state = extra;
    log(`resuming ${run.dir} at epoch ${state.epoch + 1}, image ${state.position} of the epoch`);
  } else {
    run.writeJson('model.json', model.config);
    log(describeSource(data.source));
    log(formatSampleReport(data.report, cfg.classes, data.dropped));
    const sampled = data.report.perClass === undefined ? 'no balanced sampling' : `${data.report.perClass} per class sampled`;
    log(`${data.train.length} training, ${data.validation.length} validation${data.test ? `, ${data.test.length} test` : ''} images (${sampled}; ${cfg.stratifiedSplit ? 'split per class' : 'random split'})`);
    // A first checkpoint, so a failure in the first epoch still leaves a good one.
    await model.saveState(run.last, state);
  }
  const pool = new PreprocessPool({ threads: cfg.threads });
  try {
    return await loop(cfg, run, data, model, pool, state, hooks, log);
  } finally {
    await pool.destroy();
    model.dispose();
  }
}

async function loop(cfg: RunConfig, run: RunFolder, data: Dataset, model: MotivNet, pool: PreprocessPool, state: RunState, hooks: TrainHooks, log: (line: string) => void): Promise<TrainResult> {
  const classes = cfg.classes;
  const schedule = scheduleOf(cfg);
  const { inputHeight: minHeight, inputWidth: minWidth } = model.config.encoder;
  const B = cfg.batchSize;
  const K = cfg.accumulate;
  const microPerEpoch = Math.ceil(data.train.length / B);
  const stepsPerEpoch = Math.ceil(microPerEpoch / K);
  const records = run.epochs(state.epoch);
  run.writeEpochs(records);
  let microThisCall = 0;
  let status: TrainResult['status'] = 'completed';
  let lastValidation: Metrics | undefined;

  const lrAt = (epoch: number, microIndex: number, globalStep: number) => {
    const pos = { epoch, stepInEpoch: Math.floor(microIndex / K), stepsPerEpoch, globalStep };
    return { encoderLr: learningRate(cfg.encoderLr, schedule, pos), decoderLr: learningRate(cfg.decoderLr, schedule, pos) };
  };

  for (; state.epoch < cfg.epochs && !state.finished; ) {
    const epoch = state.epoch;
    const started = performance.now();
    const skips = new SkipLog();
    const order = epochOrder(data.train, cfg.seed, epoch);
    const flips = order.map((_, i) => cfg.flip > 0 && createRng(cfg.seed, 4, epoch, i)() < cfg.flip);
    const progress = new Progress({ label: `epoch ${epoch + 1}/${cfg.epochs}`, total: order.length, stream: hooks.progressStream });
    const start = state.position;
    let interrupted = false;
    let lr = lrAt(epoch, start / B, state.globalStep);
    for await (const batch of batches(order.slice(start), { batchSize: B, prefetch: cfg.prefetch, decode: (t) => pool.decode(t), minWidth, minHeight, maxPixels: cfg.maxPixels, fastDecode: cfg.fastDecode, flips: flips.slice(start), skips })) {
      const microIndex = (start + batch.offset) / B;
      const endOfCycle = (microIndex + 1) % K === 0 || microIndex === microPerEpoch - 1;
      lr = lrAt(epoch, microIndex, state.globalStep);
      let r;
      try {
        r = await model.trainStep(batch, batch.labels, { ...lr, endOfCycle, geometry: 'stretch' });
      } catch (err) {
        // A step the core refused (a non-finite loss, a learning rate or batch it cannot use)
        // stops the run; the last checkpoint is good.
        if (err instanceof MotivNetError && (err.code === 'MOTIVNET_NON_FINITE' || err.code === 'MOTIVNET_INPUT')) {
          throw new TrainingStopped(
            `training stopped at epoch ${epoch + 1}, micro-batch ${microIndex + 1} of ${microPerEpoch} (optimizer step ${state.globalStep + 1}): ${err.message}. ` +
              `The last good checkpoint is ${run.last}`,
          );
        }
        throw err;
      }
      if (r.stepped) state.globalStep++;
      state.trainLossSum += r.loss * batch.labels.length;
      state.trainCorrect += argmaxCorrect(r.logits, batch.labels, classes);
      state.trainSeen += batch.labels.length;
      state.position = Math.min(order.length, start + batch.offset + B);
      microThisCall++;
      progress.update(state.position, state.trainSeen, {
        loss: (state.trainLossSum / Math.max(1, state.trainSeen)).toFixed(4),
        acc: (state.trainCorrect / Math.max(1, state.trainSeen)).toFixed(3),
      });
      if (hooks.signal?.aborted || (hooks.stopAfterMicroBatches !== undefined && microThisCall >= hooks.stopAfterMicroBatches)) {
        interrupted = true;
        break;
      }
    }
    progress.finish();
    appendSkips(run, skips, epoch, 'train');
    if (interrupted) {
      await model.saveState(run.last, state);
      log(`interrupted at epoch ${epoch + 1}, image ${state.position} of ${order.length}: saved ${run.last}; continue with --resume ${run.dir}`);
      status = 'interrupted';
      break;
    }
    const seconds = (performance.now() - started) / 1000;
    const valSkips = new SkipLog();
    let val: Metrics;
    try {
      val = await evaluateSet(model, pool, data.validation, { ...cfg, skips: valSkips, label: `validate ${epoch + 1}`, progressStream: hooks.progressStream, signal: hooks.signal });
    } catch (err) {
      if (!(err instanceof EvaluationAborted)) throw err;
      // The epoch's training is done and saved with it; a resumed run validates it afresh.
      await model.saveState(run.last, state);
      log(`interrupted while validating epoch ${epoch + 1}: saved ${run.last}; continue with --resume ${run.dir}`);
      status = 'interrupted';
      break;
    }
    appendSkips(run, valSkips, epoch, 'validation');
    lastValidation = val;
    const { perClass: _p, confusion: _c, ...valSummary } = val;
    records.push({
      epoch,
      trainLoss: state.trainLossSum / Math.max(1, state.trainSeen),
      trainAccuracy: state.trainCorrect / Math.max(1, state.trainSeen),
      validation: valSummary,
      encoderLr: lr.encoderLr,
      decoderLr: lr.decoderLr,
      imagesPerSecond: progress.imagesPerSecond,
      seconds,
      skipped: skips.count,
    });
    run.writeEpochs(records);
    log(
      `epoch ${epoch + 1}/${cfg.epochs}: train loss ${records.at(-1)!.trainLoss.toFixed(4)} acc ${records.at(-1)!.trainAccuracy.toFixed(3)} | ` +
        `val loss ${val.loss.toFixed(4)} acc ${val.accuracy.toFixed(3)} auroc ${val.auroc.toFixed(3)} f1 ${val.f1.toFixed(3)}` +
        (skips.count ? ` | ${skips.summary()}` : ''),
    );
    const value = val[cfg.metric];
    const improved = state.best === null || (higherIsBetter(cfg.metric) ? value > state.best.value : value < state.best.value);
    state = { ...state, epoch: epoch + 1, position: 0, trainLossSum: 0, trainCorrect: 0, trainSeen: 0 };
    if (improved) {
      state.best = { epoch, value };
      state.stale = 0;
    } else {
      state.stale++;
    }
    if (cfg.patience > 0 && state.stale >= cfg.patience && state.epoch < cfg.epochs) {
      state.finished = true;
      status = 'early-stopped';
      log(`early stop: no better validation ${cfg.metric} for ${cfg.patience} epochs (best: epoch ${state.best!.epoch + 1})`);
    }
    if (improved) await model.saveState(run.best, state);
    await model.saveState(run.last, state);
    await writeCurves(run.file('curves.png'), records.map((r) => ({ epoch: r.epoch + 1, trainLoss: r.trainLoss, trainAccuracy: r.trainAccuracy, valLoss: r.validation.loss, valAccuracy: r.validation.accuracy })));
    if (status === 'early-stopped') break;
  }
  if (status === 'interrupted') return { status, runDir: run.dir, bestEpoch: state.best?.epoch ?? null };
  try {
    return await finish(cfg, run, data, model, pool, state, records, status, lastValidation, hooks);
  } catch (err) {
    if (!(err instanceof EvaluationAborted)) throw err;
    // Training is over and its last checkpoint saved: a resumed run goes straight to the test.
    log(`interrupted during the final evaluation: ${run.last} holds the finished training; continue with --resume ${run.dir}`);
    return { status: 'interrupted', runDir: run.dir, bestEpoch: state.best?.epoch ?? null };
  }
}

/** The final evaluation and the summary of a run whose training is over. */
async function finish(
  cfg: RunConfig,
  run: RunFolder,
  data: Dataset,
  model: MotivNet,
  pool: PreprocessPool,
  state: RunState,
  records: EpochRecord[],
  status: TrainResult['status'],
  lastValidation: Metrics | undefined,
  hooks: TrainHooks,
): Promise<TrainResult> {
  const names = emotionLabels(cfg.classes);
  const evalOpts = (skips: SkipLog, label: string) => ({ ...cfg, skips, label, progressStream: hooks.progressStream, signal: hooks.signal });
  // The test set (or, without one, the validation set) with the best weights, or the final
  // ones where the recipe says so.
  const bestEpoch = state.best?.epoch ?? null;
  const withBest = cfg.testWeights === 'best' && bestEpoch !== null;
  if (withBest) await model.loadState(run.best);
  let test: Metrics | undefined;
  if (data.test) {
    const testSkips = new SkipLog();
    test = await evaluateSet(model, pool, data.test, evalOpts(testSkips, 'test'));
    appendSkips(run, testSkips, state.epoch, 'test');
  }
  const final = test ?? (withBest ? await evaluateSet(model, pool, data.validation, evalOpts(new SkipLog(), 'validate best')) : lastValidation);
  const weightsUsed = withBest ? `best epoch ${bestEpoch + 1}` : 'final weights';
  if (final) await writeConfusion(run.file('confusion.png'), final.confusion, names, `${test ? 'test' : 'validation'} set, ${weightsUsed}`);
  const pick = (m?: Metrics) => m && { accuracy: m.accuracy, auroc: m.auroc, f1: m.f1, precision: m.precision, recall: m.recall, loss: m.loss };
  run.writeJson('summary.json', {
    status,
    test: pick(test) ?? null,
    testWeights: withBest ? 'best' : 'final',
    bestValidation: pick(withBest && !test ? final : undefined) ?? (records.find((r) => r.epoch === bestEpoch)?.validation ?? null),
    bestEpoch: bestEpoch === null ? null : bestEpoch + 1,
    bestMetric: cfg.metric,
    epochs: records.length,
    perClass: final ? final.perClass.map((m, i) => ({ class: names[i], ...m })) : [],
    confusion: final?.confusion ?? [],
    sample: data.report,
    data: data.source,
    dropped: data.dropped,
  });
  return { status, runDir: run.dir, bestEpoch, test, validation: lastValidation };
}

function appendSkips(run: RunFolder, skips: SkipLog, epoch: number, phase: string): void {
  const lines = skips.entries.map((s) => JSON.stringify({ epoch: epoch + 1, phase, path: s.path, reason: s.reason }) + '\n').join('');
  appendFileSync(run.file('skipped.jsonl'), lines);
}
