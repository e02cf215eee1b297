"""Stage 5's paired bootstrap for one duo at ImageNet size: all 5 modes x 3 uncertainty types against the
temperature-scaled large model, on test (47,500) and a shifted split (10,000) x 1,000 classes, B = 1000. Times the
shared implementation (`bootstrap.resampled_metrics`) against the plain one it replaced
(`bootstrap.reference_resampled_metrics`: every predictor on its own) in the same run, checks that both give the
same intervals, and prints the peak memory of the shared run.

    python bench/bench_bootstrap.py                          # N=47500 + 10000, K=1000, B=1000 (~2.5 min)
    python bench/bench_bootstrap.py --n 5000 --k 100 --skip_reference
"""
from __future__ import annotations

import argparse
import os
import resource
import time

import numpy as np
import pandas as pd

from utils.maths import bootstrap
from utils.maths.duo_modes import MODES, DuoTemperatures
from utils.maths.uncertainty_metrics import UNCERTAINTY_TYPES
from utils.stages import intervals, scoring


def split(n: int, k: int, rng: np.random.Generator):
    labels = rng.integers(0, k, n)
    large = rng.normal(size=(n, k)).astype(np.float32) * 2.0
    large[np.arange(n), labels] += 4.0
    small = 0.6 * large + rng.normal(size=(n, k)).astype(np.float32) * 2.0

    class Data:
        pass
    data_large, data_small = Data(), Data()
    data_large.logits, data_large.labels, data_small.logits, data_small.labels = large, labels, small, labels
    return data_large, data_small


def one_duo(splits, resamples: int) -> tuple[list[dict], float]:
    temps = DuoTemperatures(1.3, 1.8, 0.45, 0.2)
    start = time.perf_counter()
    deltas = []
    for data_large, data_small in splits:
        base = intervals.resampled_baseline(intervals.scaled_terms(data_large.logits, data_large.labels, 1.3,
                                                                   UNCERTAINTY_TYPES), resamples, 0)
        deltas += scoring.duo_rows(data_large, data_small, temps, MODES, UNCERTAINTY_TYPES, base=base,
                                   resamples=resamples, seed=0)[1]
    return deltas, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs=2, default=[47_500, 10_000], help="test and shifted split sizes")
    parser.add_argument("--k", type=int, default=1_000)
    parser.add_argument("--resamples", type=int, default=1_000)
    parser.add_argument("--skip_reference", action="store_true", help="time the shared implementation only")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    splits = [split(n, args.k, rng) for n in args.n]
    bootstrap.resampled_metrics(bootstrap.sample_terms(splits[0][0].logits[:50], splits[0][0].labels[:50]), 100, 0)
    bootstrap._DRAWN.clear()                  # the compile above is not timed; its draws are not reused
    shared, cold_s = one_duo(splits, args.resamples)
    # the next duo of a stage-5 run reuses the draws (same N, B, seed): the cost of each further duo in a sweep
    _, shared_s = one_duo(splits, args.resamples)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"N={args.n} K={args.k} B={args.resamples}, {len(shared)} delta rows, {os.cpu_count()} cores")
    print(f"shared:    {cold_s:7.2f} s for the first duo (drawing the resamples), {shared_s:.2f} s for each further "
          f"duo of a run (peak memory of the process so far {peak_gb:.2f} GB)")
    if args.skip_reference:
        return
    real = bootstrap.resampled_metrics
    bootstrap.resampled_metrics = bootstrap.reference_resampled_metrics
    try:
        plain, plain_s = one_duo(splits, args.resamples)
    finally:
        bootstrap.resampled_metrics = real
    a, b = pd.DataFrame(shared), pd.DataFrame(plain)
    worst = max(np.nanmax(np.abs(a[c].to_numpy(float) - b[c].to_numpy(float))) for c in ("delta", "ci_low", "ci_high"))
    same = (a["significant"] == b["significant"]).all()
    print(f"reference: {plain_s:7.2f} s per duo (each predictor resampled on its own)")
    print(f"ratio {plain_s / cold_s:.1f}x for the first duo, {plain_s / shared_s:.1f}x for each further one")
    print(f"largest difference in delta / ci_low / ci_high {worst:.1e}; "
          f"significance {'identical' if same else 'DIFFERS'}")
    print(f"the paper's 134 ImageNet duos with --bootstrap {args.resamples}: ~{134 * shared_s / 60:.0f} min "
          f"(before: ~{134 * plain_s / 3600:.1f} h)")


if __name__ == "__main__":
    main()
