"""All metrics of one scored prediction set: this project vs a sklearn-based evaluation in the
official code's style (sklearn log_loss / brier_score_loss on the flattened one-hot / roc_auc_score,
a Python loop over ECE bins). Sizes: ImageNet test (47,500 x 1,000) and iWildCam OOD test (42,791 x 182).

    python bench/bench_metrics.py [--repeats 5]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.special import softmax
from sklearn.metrics import accuracy_score, brier_score_loss, f1_score, log_loss, roc_auc_score

from utils.maths.uncertainty_metrics import compute_metrics

SIZES = {"ImageNet test": (47_500, 1_000), "iWildCam OOD test": (42_791, 182)}
TARGETS_S = {"ImageNet test": 0.15, "iWildCam OOD test": 0.04}
OFFICIAL_S = {"ImageNet test": 8.1, "iWildCam OOD test": 1.6}   # the official code's time on a 2-core machine like this one


def sklearn_style(logits: np.ndarray, labels: np.ndarray) -> dict:
    probs = softmax(logits.astype(np.float64), axis=1)
    preds = probs.argmax(1)
    conf = probs.max(1)
    correct = preds == labels
    onehot = np.eye(probs.shape[1])[labels]
    out = {"Acc": accuracy_score(labels, preds), "F1": f1_score(labels, preds, average="macro"),
           "Brier": brier_score_loss(onehot.ravel(), probs.ravel()), "NLL": log_loss(labels, probs, labels=range(probs.shape[1]))}
    edges = np.linspace(0, 1, 16)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            ece += inside.mean() * abs(conf[inside].mean() - correct[inside].mean())
    out["ECE"] = ece
    out["CP_AUROC"] = roc_auc_score(correct, conf)
    order = np.argsort(1 - conf)
    risks = np.cumsum(~correct[order]) / np.arange(1, len(conf) + 1)
    out["AURC"] = risks.mean()
    for t in range(90, 100):
        ok = np.flatnonzero(risks <= 1 - t / 100)
        out[f"SAC@{t}"] = (ok[-1] + 1) / len(conf) if len(ok) else 0.0
    return out


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"{'set':20s} {'ours (s)':>9s} {'sklearn-style (s)':>18s} {'speed-up':>9s} {'official (s)':>13s} "
          f"{'vs official':>11s} {'target (s)':>10s}")
    for name, (n, k) in SIZES.items():
        logits = (rng.normal(size=(n, k)) * 3).astype(np.float32)
        labels = np.where(rng.random(n) < 0.8, logits.argmax(1), rng.integers(0, k, n))
        compute_metrics(logits, labels)                                  # warm-up
        ours = best_time(lambda logits=logits, labels=labels: compute_metrics(logits, labels), args.repeats)
        theirs = best_time(lambda logits=logits, labels=labels: sklearn_style(logits, labels), max(1, args.repeats // 2))
        a, b = compute_metrics(logits, labels), sklearn_style(logits, labels)
        worst = max(abs(a[key] - b[key]) for key in b)
        print(f"{name:20s} {ours:9.3f} {theirs:18.3f} {theirs / ours:8.1f}x {OFFICIAL_S[name]:13.1f} "
              f"{OFFICIAL_S[name] / ours:10.1f}x {TARGETS_S[name]:10.2f}   max |diff| {worst:.1e}")


if __name__ == "__main__":
    main()
