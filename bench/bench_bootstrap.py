"""Paired bootstrap of every metric, one duo against its temperature-scaled large model, at ImageNet
test size (47,500 x 1,000 by default): the time of the bootstrap (per-sample terms and B paired
resamples, both sides) against a budget of 10 s for B = 1000 on a 2-core machine, and apart from it the
two softmax passes it starts from (stage 5 makes them for its result rows anyway).

    python bench/bench_bootstrap.py                     # N=47500, K=1000, B=1000
    python bench/bench_bootstrap.py --n 5000 --k 100    # smaller
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from utils.maths import bootstrap
from utils.maths import uncertainty_metrics as um
from utils.maths.duo_modes import DuoTemperatures, duo_outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=47_500)
    parser.add_argument("--k", type=int, default=1_000)
    parser.add_argument("--resamples", type=int, default=1_000)
    parser.add_argument("--budget", type=float, default=10.0, help="seconds allowed for all metrics and B = 1000 "
                        "resamples (scaled to --resamples)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    labels = rng.integers(0, args.k, args.n)
    large = rng.normal(size=(args.n, args.k)).astype(np.float32) * 2.0
    large[np.arange(args.n), labels] += 4.0
    small = (0.6 * large + rng.normal(size=(args.n, args.k)).astype(np.float32) * 2.0)

    start = time.perf_counter()
    scaled = um.WeightedLogits([large], [1 / 1.3])
    base_stats = um.softmax_stats(scaled, with_entropy=False)
    duo = duo_outputs(large, small, DuoTemperatures(1.3, 1.8, 0.45, 0.2), modes=["asymmetric"],
                      uncertainty_types=["softmax_response"])["asymmetric"]
    softmax_s = time.perf_counter() - start           # stage 5 computes these anyway, for the result rows
    start = time.perf_counter()
    base = bootstrap.sample_terms(scaled, labels, stats=base_stats)
    other = bootstrap.sample_terms(duo.logits, labels, duo.predictions, duo.uncertainty["softmax_response"], duo.stats)
    table = bootstrap.paired_bootstrap(base, other, args.resamples, seed=0)
    bootstrap_s = time.perf_counter() - start
    budget = args.budget * args.resamples / 1000                 # the budget is for B = 1000
    print(table.to_string(index=False, float_format=lambda v: f"{v:.5f}"))
    print(f"\nN={args.n} K={args.k} B={args.resamples} on {os.cpu_count()} cores: the bootstrap (per-sample terms and "
          f"{args.resamples} paired resamples of every metric, both sides) {bootstrap_s:.2f} s, budget "
          f"{budget:.1f} s: {'within' if bootstrap_s <= budget else 'OVER'}; the two softmax passes it starts "
          f"from, which stage 5 makes for its result rows anyway: {softmax_s:.2f} s")

if __name__ == "__main__":
    main()
