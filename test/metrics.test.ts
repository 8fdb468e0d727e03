import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

import { binaryAuroc, computeMetrics } from '../src/train/metrics.js';
import { learningRate, REFERENCE_SCHEDULE } from '../src/train/schedule.js';

interface Case {
  numClasses: number;
  probabilities: number[];
  labels: number[];
  accuracy: number;
  auroc: number;
  f1: number;
  precision: number;
  recall: number;
  perClass: { precision: number; recall: number; f1: number; support: number }[];
  confusion: number[][];
}

// Written by scripts/reference/make_metric_fixtures.py with scikit-learn.
const cases = JSON.parse(readFileSync(path.join(__dirname, 'fixtures', 'metrics.json'), 'utf8')) as Case[];

describe('metrics', () => {
  it.each(cases.map((c, i) => [i, c] as const))('match scikit-learn on case %i', (_, c) => {
    const m = computeMetrics(c.probabilities, c.labels, c.numClasses, 1.25);
    for (const key of ['accuracy', 'auroc', 'f1', 'precision', 'recall'] as const) expect(m[key], key).toBeCloseTo(c[key], 10);
    expect(m.loss).toBe(1.25);
    expect(m.confusion).toEqual(c.confusion);
    m.perClass.forEach((p, k) => {
      expect(p.precision).toBeCloseTo(c.perClass[k]!.precision, 10);
      expect(p.recall).toBeCloseTo(c.perClass[k]!.recall, 10);
      expect(p.f1).toBeCloseTo(c.perClass[k]!.f1, 10);
      expect(p.support).toBe(c.perClass[k]!.support);
    });
  });

  it('averages tied ranks in the AUROC and is undefined for one class', () => {
    expect(binaryAuroc([0.5, 0.5, 0.5, 0.5], [true, false, true, false])).toBe(0.5);
    expect(binaryAuroc([0.1, 0.4, 0.35, 0.8], [false, false, true, true])).toBe(0.75);
    expect(binaryAuroc([0.1, 0.2], [true, true])).toBeNaN();
  });
});

describe('learning-rate schedule', () => {
  const at = (epoch: number, s = REFERENCE_SCHEDULE, stepInEpoch = 0, globalStep = 100) => learningRate(1, s, { epoch, stepInEpoch, stepsPerEpoch: 4, globalStep });

  it('is cosine annealing with warm restarts, per epoch, as the reference', () => {
    expect(at(0)).toBe(1);
    expect(at(5)).toBeCloseTo(0.5, 12);
    expect(at(9)).toBeCloseTo((1 + Math.cos((Math.PI * 9) / 10)) / 2, 12);
    expect(at(10)).toBe(1); // restart
    expect(at(15)).toBeCloseTo(0.5, 12);
    expect(at(5, REFERENCE_SCHEDULE, 3)).toBeCloseTo(0.5, 12); // per epoch: steps inside it do not move it
  });

  it('grows cycles with T_mult, steps per step when asked, and warms up linearly', () => {
    const grow = { ...REFERENCE_SCHEDULE, tMult: 2 };
    expect(at(10, grow)).toBe(1); // second cycle starts at 10 and lasts 20
    expect(at(20, grow)).toBeCloseTo(0.5, 12);
    expect(at(30, grow)).toBe(1);
    const perStep = { ...REFERENCE_SCHEDULE, per: 'step' as const };
    expect(at(4, perStep, 2)).toBeCloseTo((1 + Math.cos((Math.PI * 4.5) / 10)) / 2, 12);
    const floor = { ...REFERENCE_SCHEDULE, etaMin: 0.1 };
    expect(at(5, floor)).toBeCloseTo(0.55, 12);
    const warm = { ...REFERENCE_SCHEDULE, kind: 'constant' as const, warmupSteps: 10 };
    expect(at(0, warm, 0, 0)).toBeCloseTo(0.001, 12);
    expect(at(0, warm, 0, 5)).toBeCloseTo(0.001 + 0.999 * 0.5, 12);
    expect(at(0, warm, 0, 10)).toBe(1);
  });
});
