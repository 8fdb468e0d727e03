/**
 * Classification metrics as scikit-learn computes them (docs/REFERENCE_MODEL.md, section 6): accuracy,
 * macro one-vs-rest AUROC, macro precision / recall / F1 over all classes (a class with no
 * predictions counts 0, sklearn's zero_division=0), per-class values, the confusion matrix
 * (rows: true class, columns: predicted), and the mean loss.
 */
export interface ClassMetrics {
  precision: number;
  recall: number;
  f1: number;
  support: number;
}

export interface Metrics {
  accuracy: number;
  auroc: number;
  f1: number;
  precision: number;
  recall: number;
  loss: number;
  perClass: ClassMetrics[];
  confusion: number[][];
}

/** Area under the ROC curve of scores for a binary labelling: the Mann-Whitney U statistic with tied ranks averaged. */
export function binaryAuroc(scores: ArrayLike<number>, positive: ArrayLike<boolean>): number {
  const n = scores.length;
  const order = Array.from({ length: n }, (_, i) => i).sort((a, b) => scores[a]! - scores[b]!);
  let pos = 0;
  let rankSum = 0;
  for (let i = 0; i < n; ) {
    let j = i;
    while (j + 1 < n && scores[order[j + 1]!] === scores[order[i]!]) j++;
    const rank = (i + j) / 2 + 1; // average 1-based rank of the tie group
    for (let k = i; k <= j; k++) {
      if (positive[order[k]!]) {
        pos++;
        rankSum += rank;
      }
    }
    i = j + 1;
  }
  const neg = n - pos;
  if (pos === 0 || neg === 0) return Number.NaN;
  return (rankSum - (pos * (pos + 1)) / 2) / (pos * neg);
}

/**
 * @param probabilities (N, C) row-major class probabilities (or any scores).
 * @param labels N true classes.
 * @param loss the mean loss over the same N examples.
 */
export function computeMetrics(probabilities: ArrayLike<number>, labels: ArrayLike<number>, numClasses: number, loss: number): Metrics {
  const n = labels.length;
  if (probabilities.length !== n * numClasses) {
    throw new RangeError(`${probabilities.length} scores for ${n} examples of ${numClasses} classes`);
  }
  const confusion = Array.from({ length: numClasses }, () => new Array<number>(numClasses).fill(0));
  let correct = 0;
  for (let i = 0; i < n; i++) {
    let best = 0;
    for (let c = 1; c < numClasses; c++) if (probabilities[i * numClasses + c]! > probabilities[i * numClasses + best]!) best = c;
    confusion[labels[i]!]![best]!++;
    if (best === labels[i]) correct++;
  }
  const perClass: ClassMetrics[] = [];
  const aucs: number[] = [];
  for (let c = 0; c < numClasses; c++) {
    const tp = confusion[c]![c]!;
    const support = confusion[c]!.reduce((a, v) => a + v, 0);
    const predicted = confusion.reduce((a, row) => a + row[c]!, 0);
    const precision = predicted === 0 ? 0 : tp / predicted;
    const recall = support === 0 ? 0 : tp / support;
    const f1 = precision + recall === 0 ? 0 : (2 * precision * recall) / (precision + recall);
    perClass.push({ precision, recall, f1, support });
    const scores = Array.from({ length: n }, (_, i) => probabilities[i * numClasses + c]!);
    const auc = binaryAuroc(scores, Array.from({ length: n }, (_, i) => labels[i] === c));
    if (!Number.isNaN(auc)) aucs.push(auc);
  }
  const mean = (xs: number[]) => (xs.length === 0 ? Number.NaN : xs.reduce((a, v) => a + v, 0) / xs.length);
  return {
    accuracy: n === 0 ? Number.NaN : correct / n,
    // Classes absent from the labels have no ROC curve: averaged over the others.
    auroc: mean(aucs),
    precision: mean(perClass.map((m) => m.precision)),
    recall: mean(perClass.map((m) => m.recall)),
    f1: mean(perClass.map((m) => m.f1)),
    loss,
    perClass,
    confusion,
  };
}
