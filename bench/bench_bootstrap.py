"""Stage 5's paired bootstrap for one duo at ImageNet size: all 5 modes x 3 uncertainty types against the
temperature-scaled large model, on test (47,500) and a shifted split (10,000) x 1,000 classes, B = 1000, models of
ImageNet-like accuracy (`split`). Times the shared implementation (`bootstrap.resampled_metrics`) against the plain
one it replaced (`bootstrap.reference_resampled_metrics`: every predictor on its own) in the same run, checks that
both give the same intervals, and prints the peak memory of the shared run. Then the same for the duo's
shift-detection intervals (AUROC / AUPR / FPR95 of test against the shifted split, `shift.detection_deltas`): the
compiled walk (`shift_detection.resampled_detection`) against the array version it replaced (`weighted_detection`).

    python bench/bench_bootstrap.py                          # N=47500 + 10000, K=1000, B=1000 (~2 min)
    python bench/bench_bootstrap.py --n 5000 1000 --k 100 --skip_reference
"""
from __future__ import annotations

import argparse
import os
import resource
import time

import numpy as np
import pandas as pd

from utils.maths import bootstrap, shift_detection
from utils.maths.duo_modes import MODES, DuoTemperatures
from utils.maths.uncertainty_metrics import UNCERTAINTY_TYPES
from utils.stages import intervals, scoring, shift


def split(n: int, k: int, rng: np.random.Generator):
    """Accuracies like an ImageNet pair of the paper's (large ~83 %, sidekick ~64 %): SAC's levels (90-99 %) are
    crossed along the ranking, as with real models."""
    labels = rng.integers(0, k, n)
    large = rng.normal(size=(n, k)).astype(np.float32) * 2.0
    large[np.arange(n), labels] += 8.5
    small = 0.8 * large + rng.normal(size=(n, k)).astype(np.float32)

    class Data:
        pass
    data_large, data_small = Data(), Data()
    data_large.logits, data_large.labels, data_small.logits, data_small.labels = large, labels, small, labels
    return data_large, data_small


TEMPERATURE_LARGE = 1.3


def one_duo(splits, resamples: int, per_split: dict | None = None) -> tuple[list[dict], float]:
    """The duo's paired intervals on both splits; `per_split` receives its uncertainties (for detection)."""
    temps = DuoTemperatures(TEMPERATURE_LARGE, 1.8, 0.45, 0.2)
    start = time.perf_counter()
    deltas = []
    for name, (data_large, data_small) in zip((shift.IN_SPLIT, "shifted"), splits):
        base = intervals.resampled_baseline(intervals.scaled_terms(data_large.logits, data_large.labels,
                                                                   TEMPERATURE_LARGE, UNCERTAINTY_TYPES), resamples, 0)
        deltas += scoring.duo_rows(data_large, data_small, temps, MODES, UNCERTAINTY_TYPES, base=base,
                                   resamples=resamples, seed=0,
                                   uncertainties=None if per_split is None else per_split.setdefault(name, {}))[1]
    return deltas, time.perf_counter() - start


def array_detection(score_in, score_out, counts_in, counts_out) -> dict[str, np.ndarray]:
    """The detection bootstrap before the compiled walk: `weighted_detection` on chunks of resamples (it wants
    them along axis 0)."""
    counts_in, counts_out = counts_in.T, counts_out.T
    chunk = max(1, bootstrap.CHUNK_ENTRIES // (len(score_in) + len(score_out)))
    parts = [shift_detection.weighted_detection(score_in, score_out, counts_in[s:s + chunk], counts_out[s:s + chunk])
             for s in range(0, len(counts_in), chunk)]
    return {m: np.concatenate([p[m] for p in parts]) for m in shift_detection.DETECTION_COLUMNS}


def detection(splits, per_split: dict, resamples: int, detect) -> tuple[list[dict], float]:
    base = shift.base_uncertainties({shift.IN_SPLIT: splits[0][0], "shifted": splits[1][0]}, TEMPERATURE_LARGE,
                                    UNCERTAINTY_TYPES)
    real = shift.resampled_detection
    shift.resampled_detection = detect
    try:
        start = time.perf_counter()
        rows = shift.detection_deltas(per_split, base, resamples, 0)
        return rows, time.perf_counter() - start
    finally:
        shift.resampled_detection = real


def compare(shared: list[dict], plain: list[dict]) -> str:
    a, b = pd.DataFrame(shared), pd.DataFrame(plain)
    worst = max(np.nanmax(np.abs(a[c].to_numpy(float) - b[c].to_numpy(float))) for c in ("delta", "ci_low", "ci_high"))
    same = (a["significant"] == b["significant"]).all()
    return f"largest difference in delta / ci_low / ci_high {worst:.1e}; significance {'identical' if same else 'DIFFERS'}"


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
    try:                                      # nor the import behind the vectorised exp (once per process, ~1.5 s)
        import torch  # noqa: F401
    except ImportError:
        pass
    shared, cold_s = one_duo(splits, args.resamples)
    # the next duo of a stage-5 run reuses the draws (same N, B, seed): the cost of each further duo in a sweep
    per_split = {}
    _, shared_s = one_duo(splits, args.resamples, per_split)
    detection(splits, {k: dict(list(v.items())[:1]) for k, v in per_split.items()}, args.resamples,
              shift.resampled_detection)           # compiles the walk and draws the shifted split's resamples
    walked, walk_s = detection(splits, per_split, args.resamples, shift.resampled_detection)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"N={args.n} K={args.k} B={args.resamples}, {len(shared)} delta rows, {os.cpu_count()} cores")
    print(f"shared:    {cold_s:7.2f} s for the first duo (drawing the resamples), {shared_s:.2f} s for each further "
          f"duo of a run (peak memory of the process so far {peak_gb:.2f} GB)")
    print(f"detection: {walk_s:7.2f} s per duo for {len(walked)} shift-detection delta rows (compiled walk)")
    if args.skip_reference:
        return
    arrays, arrays_s = detection(splits, per_split, args.resamples, array_detection)
    print(f"detection: {arrays_s:7.2f} s per duo with the array version, ratio {arrays_s / walk_s:.1f}x; "
          + compare(walked, arrays))
    real = bootstrap.resampled_metrics
    bootstrap.resampled_metrics = bootstrap.reference_resampled_metrics
    try:
        plain, plain_s = one_duo(splits, args.resamples)
    finally:
        bootstrap.resampled_metrics = real
    print(f"reference: {plain_s:7.2f} s per duo (each predictor resampled on its own)")
    print(f"ratio {plain_s / cold_s:.1f}x for the first duo, {plain_s / shared_s:.1f}x for each further one")
    print(compare(shared, plain))
    sweep = "the paper's 134 ImageNet duos" if (args.n, args.k) == ([47_500, 10_000], 1_000) else \
        f"134 duos of this size (N={args.n}, K={args.k}; not ImageNet's)"
    print(f"{sweep} with --bootstrap {args.resamples}: ~{134 * shared_s / 60:.1f} min of duo intervals "
          f"(before: ~{134 * plain_s / 3600:.1f} h), ~{134 * (shared_s + walk_s) / 60:.1f} min with shift detection's "
          f"(before: ~{134 * (plain_s + arrays_s) / 3600:.1f} h)")


if __name__ == "__main__":
    main()
