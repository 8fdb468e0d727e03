/** What the commands share: number parsers, the precision option, the metrics table. */
import { InvalidArgumentError, Option } from 'commander';

import type { ClassCount } from '../data/types.js';
import type { Metrics } from '../train/metrics.js';

export const num = (what: string) => (v: string) => {
  const n = Number(v);
  if (v.trim() === '' || !Number.isFinite(n)) throw new InvalidArgumentError(`${what} must be a number, got '${v}'`);
  return n;
};
/** `--precision` of every command that loads a model; unset means the model's default, f32. */
export const precisionOption = () =>
  new Option('--precision <p>', 'compute dtype: f32 (default), or bf16 on CUDA (weights stay f32) or for inference on a CPU with AMX').choices(['f32', 'bf16']);

export const int = (what: string) => (v: string) => {
  const n = num(what)(v);
  if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError(`${what} must be a whole number, got '${v}'`);
  return n;
};
export const classes = (v: string): ClassCount => {
  if (v !== '7' && v !== '8') throw new InvalidArgumentError(`must be 7 or 8, got '${v}'`);
  return Number(v) as ClassCount;
};


export function metricsTable(m: Metrics): string {
  const pct = (v: number) => `${(100 * v).toFixed(2)}%`;
  return [
    'accuracy   AUROC      F1         precision  recall     loss',
    [pct(m.accuracy), pct(m.auroc), pct(m.f1), pct(m.precision), pct(m.recall), m.loss.toFixed(3)].map((v) => v.padEnd(10)).join(' '),
  ].join('\n');
}
