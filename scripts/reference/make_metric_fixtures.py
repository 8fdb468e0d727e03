"""Writes test/fixtures/metrics.json: random class scores and labels with scikit-learn's
metrics for them, the yardstick of src/train/metrics.ts.

    scripts/reference/.venv/bin/python scripts/reference/make_metric_fixtures.py
"""

import json
import pathlib

import numpy as np
from sklearn.metrics import (accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support,
                             precision_score, recall_score, roc_auc_score)

OUT = pathlib.Path(__file__).resolve().parents[2] / "test" / "fixtures" / "metrics.json"


def case(rng: np.random.Generator, n: int, c: int, quantize: bool) -> dict:
    labels = np.arange(n) % c
    rng.shuffle(labels)
    logits = rng.normal(size=(n, c)) + 1.5 * np.eye(c)[labels] * rng.random((n, 1))
    if quantize:  # ties in the scores exercise the averaged ranks
        logits = np.round(logits, 1)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    probs = probs.astype(np.float32).astype(np.float64)
    pred = probs.argmax(1)
    every = list(range(c))
    p, r, f, s = precision_recall_fscore_support(labels, pred, labels=every, zero_division=0)
    return {
        "numClasses": c,
        "probabilities": probs.reshape(-1).tolist(),
        "labels": labels.tolist(),
        "accuracy": accuracy_score(labels, pred),
        "auroc": roc_auc_score(labels, probs, multi_class="ovr", average="macro", labels=every),
        "f1": f1_score(labels, pred, average="macro", labels=every, zero_division=0),
        "precision": precision_score(labels, pred, average="macro", labels=every, zero_division=0),
        "recall": recall_score(labels, pred, average="macro", labels=every, zero_division=0),
        "perClass": [{"precision": a, "recall": b, "f1": d, "support": int(e)} for a, b, d, e in zip(p, r, f, s)],
        "confusion": confusion_matrix(labels, pred, labels=every).tolist(),
    }


if __name__ == "__main__":
    rng = np.random.default_rng(5)
    cases = [case(rng, 240, 8, False), case(rng, 140, 7, True), case(rng, 64, 8, True)]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(cases) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size // 1024} KiB)")
