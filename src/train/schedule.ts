/**
 * Learning-rate schedules. The reference steps PyTorch's CosineAnnealingWarmRestarts once per
 * epoch (T_0 10, T_mult 1, eta_min 0); per-step stepping uses the fractional epoch, as PyTorch
 * documents for `scheduler.step(epoch + i / iters)`. An optional linear warm-up over the first
 * optimizer steps multiplies in (Sapiens' recipe: 500 steps from 0.001 of the rate).
 */
export interface ScheduleConfig {
  kind: 'cosine-restarts' | 'constant';
  /** Epochs in the first cosine cycle. */
  t0: number;
  /** Growth of each following cycle. */
  tMult: number;
  /** Floor of the rate, as a fraction of nothing: an absolute learning rate. */
  etaMin: number;
  /** Step the cosine once per epoch (the reference) or after every optimizer step. */
  per: 'epoch' | 'step';
  /** Linear warm-up over this many optimizer steps (0: none). */
  warmupSteps: number;
}

export const REFERENCE_SCHEDULE: ScheduleConfig = { kind: 'cosine-restarts', t0: 10, tMult: 1, etaMin: 0, per: 'epoch', warmupSteps: 0 };

const WARMUP_START = 0.001;

export interface SchedulePosition {
  epoch: number;
  /** Optimizer steps done in this epoch, and how many the epoch has. */
  stepInEpoch: number;
  stepsPerEpoch: number;
  /** Optimizer steps done in the whole run. */
  globalStep: number;
}

/** Where `t` epochs fall in the restart cycles: (epochs into the current cycle, its length). */
function cyclePosition(t: number, t0: number, tMult: number): [number, number] {
  if (tMult === 1) return [t % t0, t0];
  const n = Math.floor(Math.log((t / t0) * (tMult - 1) + 1) / Math.log(tMult));
  const start = (t0 * (tMult ** n - 1)) / (tMult - 1);
  return [t - start, t0 * tMult ** n];
}

export function learningRate(base: number, s: ScheduleConfig, pos: SchedulePosition): number {
  let lr = base;
  if (s.kind === 'cosine-restarts') {
    const t = s.per === 'epoch' ? pos.epoch : pos.epoch + pos.stepInEpoch / Math.max(1, pos.stepsPerEpoch);
    const [tCur, tI] = cyclePosition(t, s.t0, s.tMult);
    lr = s.etaMin + ((base - s.etaMin) * (1 + Math.cos((Math.PI * tCur) / tI))) / 2;
  }
  if (s.warmupSteps > 0 && pos.globalStep < s.warmupSteps) {
    lr *= WARMUP_START + ((1 - WARMUP_START) * pos.globalStep) / s.warmupSteps;
  }
  return lr;
}
