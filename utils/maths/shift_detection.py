"""Shift detection: how well a predictor's uncertainty separates in-distribution test samples (negatives) from
shifted ones (positives). Higher uncertainty should mean "shifted".

- AUROC: the probability that a shifted sample is more uncertain than an in-distribution one, ties counting
  one half (0.5 when the two score distributions are the same).
- AUPR: average precision with the shifted samples as positives, thresholds at the distinct scores (tied
  samples enter together): the sum over thresholds of (recall gained) x (precision there).
- FPR95: the fraction of in-distribution samples flagged at the highest threshold that flags at least 95 % of the
  shifted ones (tied samples flagged together).

Each is computed for every column of two count matrices at once (`weighted_detection`: sample i of the test
split counted counts_in[r, i] times in resample r); with counts of 1 it is the plain metric (`detection_metrics`).
The paired bootstrap of a duo against its large model takes the same numbers from compiled walks in score order
(`resampled_detection`), which tests/test_shift_detection.py checks against `weighted_detection`.
docs/methods.md states the conventions.
"""
from __future__ import annotations

import numpy as np

DETECTION_COLUMNS = ("AUROC", "AUPR", "FPR95")
TPR_LEVEL = 0.95


def _ranked(score_in: np.ndarray, score_out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both splits' samples by descending score (stable; the shifted split's numbered after the test split's),
    and where a run of tied scores starts, in that order."""
    scores = np.concatenate([np.asarray(score_in, np.float64), np.asarray(score_out, np.float64)])
    order = np.argsort(-scores, kind="stable")
    ranked = scores[order]
    return order, np.r_[True, ranked[1:] != ranked[:-1]]


def weighted_detection(score_in: np.ndarray, score_out: np.ndarray, counts_in: np.ndarray,
                       counts_out: np.ndarray) -> dict[str, np.ndarray]:
    """The three metrics for each row r of counts_in (R, n_in) and counts_out (R, n_out)."""
    order, run_start = _ranked(score_in, score_out)
    starts = np.flatnonzero(run_start)                                        # groups of tied scores, descending
    weights = np.concatenate([np.asarray(counts_in, np.float64), np.asarray(counts_out, np.float64)], axis=1)[:, order]
    is_out = (order >= len(score_in)).astype(np.float64)
    tp = np.add.reduceat(weights * is_out, starts, axis=1)                     # (R, groups)
    fp = np.add.reduceat(weights * (1.0 - is_out), starts, axis=1)
    tp_cum, fp_cum = np.cumsum(tp, axis=1), np.cumsum(fp, axis=1)
    positives, negatives = tp_cum[:, -1], fp_cum[:, -1]
    auroc = (fp * (tp_cum - tp + 0.5 * tp)).sum(axis=1) / (positives * negatives)
    flagged = tp_cum + fp_cum
    precision = np.divide(tp_cum, flagged, out=np.zeros_like(tp_cum), where=flagged > 0)
    aupr = (tp * precision).sum(axis=1) / positives
    reached = tp_cum >= TPR_LEVEL * positives[:, None] - 1e-9 * positives[:, None]
    first = reached.argmax(axis=1)
    fpr95 = fp_cum[np.arange(len(first)), first] / negatives
    return {"AUROC": auroc, "AUPR": aupr, "FPR95": fpr95}


def resampled_detection(score_in: np.ndarray, score_out: np.ndarray, counts_in: np.ndarray,
                        counts_out: np.ndarray) -> dict[str, np.ndarray]:
    """`weighted_detection`'s numbers for integer counts of any number of resamples, given samples along axis 0
    (counts_in (n_in, R), counts_out (n_out, R): the layout `bootstrap.shared_counts` keeps),
    without (resamples x samples) float arrays: compiled walks in score order, groups of resamples spread over the
    cores."""
    from utils.maths.bootstrap_kernels import detection_sums, lanes_for
    order, run_start = _ranked(score_in, score_out)
    group_end = np.r_[run_start[1:], True]
    shifted = order >= len(score_in)
    group = np.cumsum(run_start) - 1
    with_shifted = np.zeros(group[-1] + 1, dtype=bool)
    with_shifted[group[shifted]] = True
    full_group = group_end & with_shifted[group]
    full_group[np.argmax(group_end)] = True                   # the first group: the TPR level may be reached at once
    dtype = np.result_type(counts_in.dtype, counts_out.dtype)
    auroc, aupr, fpr95 = detection_sums(counts_in.astype(dtype, copy=False), counts_out.astype(dtype, copy=False),
                                        order, shifted, group_end, full_group, TPR_LEVEL,
                                        lanes_for(counts_in.shape[1]))
    return {"AUROC": auroc, "AUPR": aupr, "FPR95": fpr95}


def detection_metrics(score_in: np.ndarray, score_out: np.ndarray) -> dict[str, float]:
    found = weighted_detection(score_in, score_out, np.ones((1, len(score_in))), np.ones((1, len(score_out))))
    return {name: float(values[0]) for name, values in found.items()}
