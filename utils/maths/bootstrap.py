"""Paired bootstrap confidence intervals for the difference of every metric between two predictors
scored on the same test samples (a duo against its temperature-scaled large model).

A resample is a count vector c (how often each sample was drawn, summing to N). Every metric is then
a function of weighted sums over the samples, so B resamples are an (N, B) count matrix and the
metrics are weighted sums and cumulative sums over one fixed ordering: no resampled copy of the
logits, and one sort per predictor (not per resample) for the ranking metrics. `weighted_metrics` is
the plain version in numpy; `resampled_metrics` gets the same numbers from compiled passes. With c = 1 every
function reproduces `uncertainty_metrics.compute_metrics` (ties in uncertainty broken by sample
order, as there). Both predictors get the same count matrix: the interval is paired.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import sparse

from utils.errors import UserError
from utils.maths import uncertainty_metrics as um

SAC_LEVELS = tuple(range(90, 100))
FEWEST_RESAMPLES, MOST_RESAMPLES = 100, 100_000   # fewer leave a 95% interval's tails a handful of draws
# Fewer test samples than this and the resamples take too few distinct values for a 95% percentile interval to
# mean anything (with 1 sample every resample is the same: a zero-width interval); such a split is refused.
FEWEST_SAMPLES = 20
CHUNK_ENTRIES = 1 << 21               # resamples per chunk x N: ~16 MiB per float64 array
CLASS_COUNT_BYTES = 1 << 27           # F1's class counts, all threads' passes of resamples: ~128 MiB
# An interval that excludes 0 only by rounding (a duo whose fit reverted to f_large differs from the TS large
# model by ~1e-9 in NLL) is no finding: significance needs a bound beyond this, in the metric's own units.
NEGLIGIBLE = 1e-9


def excludes_zero(low, high):
    """Whether a [low, high] interval (scalars or arrays) lies clear of 0 by more than NEGLIGIBLE; an interval of
    zero width (every resample gave the same difference: a degenerate split) never does."""
    low, high = np.asarray(low), np.asarray(high)
    return ((low > NEGLIGIBLE) | (high < -NEGLIGIBLE)) & (high > low)


def check_samples(n: int, where: str) -> None:
    """A split of `n` samples can be bootstrapped (FEWEST_SAMPLES or more); else an error naming `where`."""
    if n < FEWEST_SAMPLES:
        raise UserError(f"{where}: {n} sample(s), too few for a paired bootstrap (it needs {FEWEST_SAMPLES} or more: "
                        f"fewer give intervals that mean nothing); evaluate without --bootstrap, or on a larger split")


@dataclass
class SampleTerms:
    """What every metric needs, per test sample, of one scored predictor."""
    labels: np.ndarray           # int64
    predictions: np.ndarray      # int64
    uncertainty: np.ndarray      # float64, lower = more confident
    correct: np.ndarray          # bool, the prediction equals the label
    nll: np.ndarray              # -log p_y
    brier: np.ndarray            # sum_k (p_k - onehot_k)^2 / K
    confidence: np.ndarray       # max p
    calibration_correct: np.ndarray   # argmax p equals the label (ECE's accuracy, whatever the prediction)
    ece_bin: np.ndarray          # the confidence's ECE bin, -1 outside
    order: np.ndarray            # samples by uncertainty, ascending, stable
    tie_starts: np.ndarray       # where runs of equal uncertainty begin in `order`
    true_class: sparse.csr_matrix       # (K, N) one-hot of the labels
    predicted_class: sparse.csr_matrix  # (K, N) one-hot of the predictions
    hit_class: sparse.csr_matrix        # (K, N) one-hot of the labels of correct predictions


def _assemble(labels: np.ndarray, predictions: np.ndarray, uncertainty: np.ndarray, nll: np.ndarray,
              brier: np.ndarray, confidence: np.ndarray, calibration_correct: np.ndarray,
              num_classes: int) -> SampleTerms:
    """SampleTerms from the per-sample quantities; the orderings and one-hots follow from them."""
    correct = predictions == labels
    order = np.argsort(uncertainty, kind="stable")
    ranked = uncertainty[order]
    n = len(labels)
    columns = np.arange(n)

    def one_hot(rows: np.ndarray, keep: np.ndarray | None = None) -> sparse.csr_matrix:
        keep = np.ones(n, dtype=bool) if keep is None else keep
        return sparse.csr_matrix((np.ones(int(keep.sum())), (rows[keep], columns[keep])), shape=(num_classes, n))

    return SampleTerms(labels=labels, predictions=predictions, uncertainty=uncertainty, correct=correct, nll=nll,
                       brier=brier, confidence=confidence, calibration_correct=calibration_correct,
                       ece_bin=um.ece_bin_index(confidence), order=order,
                       tie_starts=np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]]),
                       true_class=one_hot(labels), predicted_class=one_hot(predictions),
                       hit_class=one_hot(labels, correct))


def sample_terms(logits, labels: np.ndarray, predictions: np.ndarray | None = None,
                 uncertainty: np.ndarray | None = None, stats: um.SoftmaxStats | None = None) -> SampleTerms:
    """The per-sample terms of a predictor, with compute_metrics' defaults (argmax, softmax response)."""
    labels = np.asarray(labels, dtype=np.int64)
    stats = stats or um.softmax_stats(logits, with_entropy=False)
    predictions = stats.argmax if predictions is None else np.asarray(predictions, dtype=np.int64)
    uncertainty = um.softmax_response(logits, stats) if uncertainty is None else np.asarray(uncertainty, dtype=np.float64)
    label_log_prob = um.log_prob_at(logits, stats, labels)
    return _assemble(labels, predictions, uncertainty, -label_log_prob, um.brier_rows(stats, labels, label_log_prob),
                     stats.confidence, stats.argmax == labels, stats.num_classes)


def mixed_terms(first: SampleTerms, second: SampleTerms, take_second: np.ndarray) -> SampleTerms:
    """The predictor that answers with `second` where `take_second` and with `first` elsewhere (a cascade):
    every per-sample quantity, the uncertainty included, is the answering predictor's."""
    if not np.array_equal(first.labels, second.labels):
        raise ValueError("mixed_terms: the two predictors were scored on different labels")
    take_second = np.asarray(take_second, dtype=bool)

    def pick(name: str) -> np.ndarray:
        return np.where(take_second, getattr(second, name), getattr(first, name))

    return _assemble(first.labels, pick("predictions"), pick("uncertainty"), pick("nll"), pick("brier"),
                     pick("confidence"), pick("calibration_correct"), first.true_class.shape[0])


def _macro_f1(tp: np.ndarray, true_count: np.ndarray, pred_count: np.ndarray, present_only: bool) -> np.ndarray:
    denom = true_count + pred_count
    f1 = np.divide(2.0 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    chosen = true_count > 0 if present_only else denom > 0
    return (f1 * chosen).sum(axis=0) / chosen.sum(axis=0)          # classes along axis 0


def weighted_metrics(terms: SampleTerms, counts: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric column (METRIC_COLUMNS) for each column of `counts` (N, R): the metric of the test set
    that holds sample i counts[i, r] times. (Samples along axis 0: numpy accumulates fastest that way.) The
    reference computation: `resampled_metrics` gets the same numbers sharing its work across predictors."""
    counts = np.asarray(counts, dtype=np.float64)
    n = counts.sum(axis=0)
    out = {"Acc": terms.correct @ counts / n, "NLL": terms.nll @ counts / n, "Brier": terms.brier @ counts / n}
    out.update(_class_and_bin_metrics(terms, counts, n, np.asarray(terms.true_class @ counts)))
    out.update(_weighted_selective(terms, counts, n))
    return {name: out[name] for name in um.METRIC_COLUMNS}


def _class_and_bin_metrics(terms: SampleTerms, counts: np.ndarray, n: np.ndarray, true: np.ndarray) -> dict:
    """F1, F1_present and ECE of each column of `counts` (`true`: the per-class counts of the labels)."""
    tp, pred = (np.asarray(matrix @ counts) for matrix in (terms.hit_class, terms.predicted_class))
    inside = np.flatnonzero(terms.ece_bin >= 0)
    gap = sparse.csr_matrix(((terms.confidence - terms.calibration_correct)[inside], (terms.ece_bin[inside], inside)),
                            shape=(um.ECE_BINS, len(terms.ece_bin)))
    return _f1_and_ece(tp, true, pred, np.asarray(gap @ counts), n)


def _f1_and_ece(tp: np.ndarray, true: np.ndarray, pred: np.ndarray, bin_gaps: np.ndarray, n: np.ndarray) -> dict:
    """F1, F1_present and ECE from the per-class counts (K, R) and the ECE bins' sums of gaps (bins, R)."""
    tp, true, pred = (np.asarray(x, dtype=np.float64) for x in (tp, true, pred))
    return {"F1": _macro_f1(tp, true, pred, present_only=False), "F1_present": _macro_f1(tp, true, pred, present_only=True),
            "ECE": np.abs(bin_gaps).sum(axis=0) / n}


def _weighted_selective(terms: SampleTerms, counts: np.ndarray, n: np.ndarray) -> dict[str, np.ndarray]:
    """CP_AUROC, AURC, E-AURC, SAC@t and AUGRC from the samples in uncertainty order, sample j a block of
    c_j = counts[j, r] equal copies (adjacent, as a stable sort puts them): C_j copies and E_j errors up to
    and including block j, C_{j-1} and E_{j-1} before it (row j of the `before` views)."""
    c = counts[terms.order]
    err = (~terms.correct[terms.order]).astype(np.float64)
    rows, resamples = c.shape
    running = np.zeros((2, rows + 1, resamples))
    np.cumsum(c, axis=0, out=running[0, 1:])
    np.cumsum(c * err[:, None], axis=0, out=running[1, 1:])
    total, errors = running[0, 1:], running[1, 1:]
    total_before, errors_before = running[0, :-1], running[1, :-1]
    n_errors = errors[-1]
    n_correct = n - n_errors
    harmonic = np.r_[0.0, np.cumsum(1.0 / np.arange(1, int(n.max()) + 1))]
    h_total = harmonic[total.astype(np.int64)]
    h_gap = np.diff(h_total, axis=0, prepend=0.0)            # sum of 1/k over the k of block j
    # sum over k in block j of errors_k / k, errors_k = E_{j-1} + err_j (k - C_{j-1}): AURC's numerator
    aurc = (np.einsum("jr,jr->r", errors_before, h_gap) - np.einsum("j,jr,jr->r", err, total_before, h_gap)
            + n_errors) / n
    oracle = (n_errors - n_correct * (harmonic[n.astype(np.int64)] - harmonic[n_correct.astype(np.int64)])) / n
    augrc = (np.einsum("jr,jr->r", errors_before, c) + (np.einsum("j,jr,jr->r", err, c, c) + n_errors) / 2) / n ** 2
    out = {"AURC": aurc, "E-AURC": aurc - oracle, "AUGRC": augrc, **_sac(c, err, total, errors, n)}
    # CP_AUROC: correct vs wrong ranked by -uncertainty, ties counting one half (per run of equal uncertainty)
    if len(terms.tie_starts) == rows:          # no ties: a correct sample beats the errors after it
        wins = n_correct * n_errors - (np.einsum("jr,jr->r", c, errors) - np.einsum("j,jr,jr->r", err, c, errors))
    else:
        negatives = np.add.reduceat(c * err[:, None], terms.tie_starts, axis=0)
        positives = np.add.reduceat(c, terms.tie_starts, axis=0) - negatives
        negatives_after = n_errors - np.cumsum(negatives, axis=0)
        wins = (positives * (negatives_after + 0.5 * negatives)).sum(axis=0)
    pairs = n_correct * n_errors
    out["CP_AUROC"] = np.divide(wins, pairs, out=np.full(len(n), np.nan), where=pairs > 0)
    return out


def _sac(c, err, total, errors, n) -> dict[str, np.ndarray]:
    """SAC@t = largest k / N with 100 errors_k <= (100 - t) k. At a block's end the condition holds for every
    t <= 100 (C_j - E_j) / C_j; the last block end that allows t gives the largest k (C_j grows): with the
    running maximum of those thresholds taken from the end, the blocks that allow t form a prefix, whose
    length one binary search per resample finds. Inside a block of wrong predictions drawn twice or more the
    errors grow with k, so a point before its end can qualify when its end does not: those few blocks are
    checked one by one."""
    rows, resamples = c.shape
    allowed = np.subtract(total, errors)
    allowed *= 100
    allowed /= np.maximum(total, 1.0)                      # leading empty blocks (C = 0) allow nothing: 0
    from_end = np.maximum.accumulate(allowed[::-1], axis=0)      # non-decreasing down the rows
    # blocks allowing t: those j whose running maximum from the end is >= t, i.e. the first rows - below
    below = np.stack([np.searchsorted(from_end[:, r], SAC_LEVELS, side="left") for r in range(resamples)], axis=1)
    prefix = rows - below                                   # (levels, resamples)
    wrong_rows = np.flatnonzero(err > 0)
    block_rows, columns = np.nonzero(c[wrong_rows] >= 2)     # wrong predictions drawn twice or more
    blocks = wrong_rows[block_rows]
    block_total, block_count = total[blocks, columns], c[blocks, columns]
    slack = 100 * (block_total - block_count - (errors[blocks, columns] - block_count))
    out = {}
    everyone = np.arange(resamples)
    for level, t in enumerate(SAC_LEVELS):
        last = prefix[level]
        best = np.where(last > 0, total[np.maximum(last - 1, 0), everyone], 0.0)
        inner = np.minimum(block_total - 1, np.floor(slack / t))
        ok = inner >= block_total - block_count + 1
        np.maximum.at(best, columns[ok], inner[ok])
        out[f"SAC@{t}"] = best / n
    return out


def resample_counts(n: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(n, resamples) counts: column r holds how often each of the n samples was drawn in n draws."""
    draws = rng.integers(0, n, size=(resamples, n))
    flat = (draws * resamples + np.arange(resamples)[:, None]).ravel()
    return np.bincount(flat, minlength=n * resamples).reshape(n, resamples).astype(np.float64)


def draw_counts(n: int, resamples: int, seed: int) -> np.ndarray:
    """(n, resamples) counts, C-ordered, in the smallest integer type that holds them: column r holds how often each
    of the n samples was drawn in resample r (a sample's draws in every resample side by side, the layout of
    utils/maths/bootstrap_kernels.py). The same draws as `resample_counts` called chunk by chunk with one generator,
    so every result of earlier versions stays valid. Counted a chunk of resamples at a time: memory stays at the
    result (uint8: n x resamples bytes, 4.75 GB for B = 100,000 at ImageNet's 47,500) and one chunk."""
    from utils.maths.bootstrap_kernels import count_draws
    rng = np.random.default_rng(seed)
    chunk = max(1, CHUNK_ENTRIES // n)
    counts = np.empty((n, resamples), dtype=np.uint8)
    block = np.empty((chunk, n), dtype=np.int32)
    for start in range(0, resamples, chunk):
        part = block[:min(chunk, resamples - start)]
        part[:] = 0
        count_draws(rng.integers(0, n, size=part.shape), part)
        if counts.dtype == np.uint8 and part.max() > np.iinfo(np.uint8).max:
            counts = counts.astype(np.int32)             # a sample drawn 256 times or more in one resample: rare
        counts[:, start:start + len(part)] = part.T
    return counts


# The (n, resamples, seed) drawn lately, in the layout the compiled passes read: a stage's duos share them. A stage-5
# duo with a shifted split uses three (test, the shifted split, and the shifted split's own draws for detection), and
# more shifted splits use more, so the cache is bounded by memory, not by a count, and the least recently used leave.
_DRAWN: dict[tuple[int, int, int], np.ndarray] = {}
DRAWN_BYTES = 1 << 30


def shared_counts(n: int, resamples: int, seed: int) -> np.ndarray:
    """`draw_counts(n, resamples, seed)`, kept for the next call with the same arguments."""
    key = (n, resamples, seed)
    if key in _DRAWN:
        _DRAWN[key] = _DRAWN.pop(key)                   # most recently used last
        return _DRAWN[key]
    counts = draw_counts(n, resamples, seed)
    while _DRAWN and sum(kept.nbytes for kept in _DRAWN.values()) + counts.nbytes > DRAWN_BYTES:
        _DRAWN.pop(next(iter(_DRAWN)))
    _DRAWN[key] = counts
    return counts


def _content_key(*arrays: np.ndarray) -> bytes:
    digest = hashlib.blake2b(digest_size=16)
    for array in arrays:
        digest.update(np.ascontiguousarray(array).view(np.uint8))
    return digest.digest()


def resampled_metrics(terms: SampleTerms | list[SampleTerms], resamples: int, seed: int):
    """Every metric on `resamples` resamples of the test samples, for one predictor (a dict) or several
    scored on the same samples (a list of dicts, each resample shared by all). The same (n, resamples, seed)
    always draws the same resamples, so results of separate calls pair up too.

    The predictors share their work: one count matrix (kept for the next call with the same draws), one pass over
    it for the additive metrics of every distinct prediction, one ranking pass per distinct (uncertainty, errors)
    pair, compiled and spread over the cores (utils/maths/bootstrap_kernels.py). The numbers are `weighted_metrics`'
    on the same counts (to 1e-12; tests/test_bootstrap.py)."""
    if not FEWEST_RESAMPLES <= resamples <= MOST_RESAMPLES:
        raise ValueError(f"{resamples} resamples: use {FEWEST_RESAMPLES} to {MOST_RESAMPLES} (1000 is usual)")
    several = isinstance(terms, list)
    members = terms if several else [terms]
    n = len(members[0].correct)
    check_samples(n, "the paired bootstrap")
    counts_by_sample = shared_counts(n, resamples, seed)
    scored = {}            # content key -> that predictor's part of the metrics
    additive = {}
    for member in members:
        key = _content_key(member.predictions, member.nll, member.brier, member.confidence, member.calibration_correct)
        additive.setdefault(key, member)
    sums = _additive_resampled(list(additive.values()), counts_by_sample)
    for key, values in zip(additive, sums):
        scored[key] = values
    ranked = {}
    for member in members:
        ranked.setdefault(_content_key(member.uncertainty, member.correct), member)
    selective = {key: _selective_resampled(member, counts_by_sample) for key, member in ranked.items()}
    out = []
    for member in members:
        found = {**scored[_content_key(member.predictions, member.nll, member.brier, member.confidence,
                                       member.calibration_correct)],
                 **selective[_content_key(member.uncertainty, member.correct)]}
        out.append({m: found[m] for m in um.METRIC_COLUMNS})
    return out if several else out[0]


def _additive_resampled(members: list[SampleTerms], counts_by_sample: np.ndarray) -> list[dict]:
    """Acc, NLL, Brier, F1, F1_present and ECE of each member on every resample, from compiled passes over the counts
    (one per group of members whose class counts fit CLASS_COUNT_BYTES). counts_by_sample: (n, resamples)."""
    from utils.maths.bootstrap_kernels import additive_sums

    def by_sample(values) -> np.ndarray:              # (N, M): a sample's members side by side
        return np.stack(list(values), axis=1)
    out = []
    for group in _member_groups(members):
        right, nll, brier, f1, f1_present, bin_gaps, sizes = additive_sums(
            counts_by_sample, group[0].labels, by_sample(m.predictions for m in group),
            by_sample(m.correct for m in group), by_sample(np.where(m.ece_bin >= 0, m.ece_bin, um.ECE_BINS) for m in group),
            by_sample(m.confidence - m.calibration_correct for m in group), by_sample(m.nll for m in group),
            by_sample(m.brier for m in group), group[0].true_class.shape[0], um.ECE_BINS)
        total = sizes.astype(np.float64)
        out += [{"Acc": right[i] / total, "NLL": nll[i] / total, "Brier": brier[i] / total, "F1": f1[i],
                 "F1_present": f1_present[i], "ECE": np.abs(bin_gaps[i]).sum(axis=0) / total} for i in range(len(group))]
    return out


def _member_groups(members: list[SampleTerms]):
    """The members in groups whose class counts stay within CLASS_COUNT_BYTES, all threads' together (each thread
    counts a pass of resamples: int32 (2 M + 1) x K x RESAMPLES_PER_PASS)."""
    import numba

    from utils.maths.bootstrap_kernels import RESAMPLES_PER_PASS
    per_thread = CLASS_COUNT_BYTES // numba.get_num_threads()
    size = max(1, (per_thread // (RESAMPLES_PER_PASS * members[0].true_class.shape[0] * 4) - 1) // 2)
    for start in range(0, len(members), size):
        yield members[start:start + size]


def _selective_resampled(terms: SampleTerms, counts_by_sample: np.ndarray) -> dict[str, np.ndarray]:
    """`_weighted_selective` of every resample at once, from the compiled ranking pass. counts_by_sample: (n, resamples)."""
    from utils.maths.bootstrap_kernels import lanes_for, selective_sums
    n, resamples = counts_by_sample.shape
    run_start = np.zeros(n, dtype=np.bool_)
    run_start[terms.tie_starts] = True
    harmonic = np.r_[0.0, np.cumsum(1.0 / np.arange(1, n + 1))]
    n_errors, ramp_sum, a1, a2, loss, best = selective_sums(
        counts_by_sample, terms.order, ~terms.correct[terms.order], run_start, np.arange(n + 1) * harmonic,
        np.asarray(SAC_LEVELS, dtype=np.int64), lanes_for(resamples))
    total = float(n)
    n_correct = total - n_errors
    aurc = (n_errors * (harmonic[n] + 1) - ramp_sum) / total
    oracle = (n_errors - n_correct * (harmonic[n] - harmonic[n_correct.astype(np.int64)])) / total
    pairs = n_correct * n_errors
    out = {"AURC": aurc, "E-AURC": aurc - oracle, "AUGRC": (a1 + (a2 + n_errors) / 2) / total ** 2,
           "CP_AUROC": np.divide(pairs - loss, pairs, out=np.full(resamples, np.nan), where=pairs > 0)}
    out.update({f"SAC@{t}": best[level] / total for level, t in enumerate(SAC_LEVELS)})
    return out


def reference_resampled_metrics(terms: SampleTerms | list[SampleTerms], resamples: int, seed: int):
    """`resampled_metrics` the plain way: each predictor on its own, `weighted_metrics` chunk by chunk (what the
    project did before the shared version; kept to check it and to time it against, bench/bench_bootstrap.py)."""
    several = isinstance(terms, list)
    members = terms if several else [terms]
    n = len(members[0].correct)
    out = []
    for member in members:
        rng = np.random.default_rng(seed)
        chunk = max(1, CHUNK_ENTRIES // n)
        part = [weighted_metrics(member, resample_counts(n, min(chunk, resamples - start), rng))
                for start in range(0, resamples, chunk)]
        out.append({m: np.concatenate([p[m] for p in part]) for m in um.METRIC_COLUMNS})
    return out if several else out[0]


def point_metrics(terms: SampleTerms) -> dict[str, float]:
    return {m: float(v[0]) for m, v in weighted_metrics(terms, np.ones((len(terms.correct), 1))).items()}


def interval_table(base: tuple[dict, dict], other: tuple[dict, dict], resamples: int, seed: int,
                   level: float = 0.95) -> pd.DataFrame:
    """Per metric: other - base on the test set, the percentile interval of the paired resampled differences,
    and whether it excludes 0. `base` and `other` are (point_metrics, resampled_metrics) of the same draws.
    Resamples where a metric is undefined (CP_AUROC with all or no predictions correct) are left out."""
    tail = 100 * (1 - level) / 2
    rows = []
    for m in um.METRIC_COLUMNS:
        values = other[1][m] - base[1][m]
        values = values[np.isfinite(values)]
        low, high = (np.percentile(values, [tail, 100 - tail]) if len(values) else (np.nan, np.nan))
        rows.append({"metric": m, "delta": other[0][m] - base[0][m], "ci_low": low, "ci_high": high,
                     "significant": bool(excludes_zero(low, high)), "B": resamples, "seed": seed})
    return pd.DataFrame(rows)


def paired_bootstrap(base: SampleTerms, other: SampleTerms, resamples: int = 1000, seed: int = 0,
                     level: float = 0.95) -> pd.DataFrame:
    """`interval_table` of two predictors scored on the same test samples."""
    if len(other.correct) != len(base.correct):
        raise ValueError(f"paired bootstrap of {len(base.correct)} and {len(other.correct)} samples")
    base_samples, other_samples = resampled_metrics([base, other], resamples, seed)
    return interval_table((point_metrics(base), base_samples), (point_metrics(other), other_samples),
                          resamples, seed, level)
