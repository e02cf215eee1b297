"""Cascades of a large model and its sidekick, from the logits the duos already use.

A cascade runs a first model on every input and the second only where the first is unsure (its
uncertainty u > tau); where both ran it answers with the duo (the asymmetric mode: z = w_l l + w_s s,
argmax p, the duo's own uncertainty), elsewhere with the first model temperature-scaled. Two orders:

- `large_first`: f_large on every input, the sidekick on its uncertain ones;
- `small_first`: the sidekick on every input, f_large on its uncertain ones.

tau = -inf defers every input (the cascade is the duo), tau = +inf none (the first model alone). The
expected cost per input is gflops_first + (fraction deferred) * gflops_second. Every per-sample
quantity (prediction, NLL, Brier, confidence, uncertainty) is the answering predictor's, so the metrics
are those of the mixed prediction set (`bootstrap.mixed_terms`).
"""
from __future__ import annotations

import math

import numpy as np

from utils.maths.bootstrap import SampleTerms, mixed_terms, point_metrics

ORDERS = ("large_first", "small_first")


def sweep_thresholds(uncertainty: np.ndarray, steps: int) -> list[tuple[float, float]]:
    """(target fraction f, tau) for f = 0, 1/steps, ..., 1 (`threshold_for_fraction`): f = 0 gives +inf, f = 1
    gives -inf."""
    return [(step / steps, threshold_for_fraction(uncertainty, step / steps)) for step in range(steps + 1)]


def budget_fraction(budget: float, gflops_large: float, gflops_first: float, gflops_second: float) -> float:
    """The fraction of inputs the second model may see for an expected cost of `budget` x gflops_large,
    clipped to [0, 1] (a budget below the first model's own cost defers nothing)."""
    if gflops_second <= 0:
        return 1.0
    return min(1.0, max(0.0, (budget * gflops_large - gflops_first) / gflops_second))


def threshold_for_fraction(uncertainty: np.ndarray, fraction: float) -> float:
    """tau deferring the round(fraction N) most uncertain samples (u > tau; ties at tau stay, so the realised
    fraction can be lower): a sweep point on test, or a budget's threshold on val."""
    ranked = np.sort(np.asarray(uncertainty, dtype=np.float64))
    n = len(ranked)
    deferred = int(round(fraction * n))
    return math.inf if deferred == 0 else -math.inf if deferred >= n else float(ranked[n - deferred - 1])


def cascade_point(first: SampleTerms, duo: SampleTerms, tau: float) -> tuple[dict[str, float], float]:
    """Every metric of the cascade at threshold tau and the fraction of samples it deferred. `first` holds the
    first model's terms (its uncertainty is what tau is compared with), `duo` the duo's, on the same samples."""
    deferred = first.uncertainty > tau
    return point_metrics(mixed_terms(first, duo, deferred)), float(deferred.mean())


def expected_gflops(order: str, gflops_large: float, gflops_small: float, deferred: float) -> float:
    if order == "large_first":
        return gflops_large + deferred * gflops_small
    if order == "small_first":
        return gflops_small + deferred * gflops_large
    raise ValueError(f"unknown cascade order '{order}'; choose from {', '.join(ORDERS)}")
