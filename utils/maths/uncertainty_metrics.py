"""Uncertainty measures and evaluation metrics (docs/methods.md, "Metrics"), vectorised, float64, O(N log N).

The heavy part, softmax statistics over an [N, K] logit matrix, is one pass per row block in
float64 (`softmax_stats`); every metric and uncertainty measure is then a cheap function of
those statistics, so a probability vector is never materialised twice and no sklearn call sits
in the hot path (sklearn and torchmetrics are the test oracles). numpy only, except that matrices of
ImageNet size borrow torch's vectorised exp when torch is installed (ACCELERATE_ENTRIES below).

Conventions, matching the official evaluation code unless noted:
- Brier: mean over all N*K entries of (p - onehot)^2.
- NLL: mean -log p_y from log-softmax in float64 (no clipping).
- ECE: 15 equal-width right-closed bins (lo, hi] on confidence = max p, accuracy of argmax p.
- AURC/E-AURC/SAC/AUGRC: samples sorted by uncertainty ascending with a stable sort, so ties
  are broken by sample order (the official code's unstable quicksort made them arbitrary).
- SAC@t: largest coverage k/N whose selective risk satisfies 100*errors_k <= (100 - t)*k.
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

METRIC_COLUMNS = (["Acc", "F1", "Brier", "NLL", "ECE", "CP_AUROC", "AURC", "E-AURC"]
                  + [f"SAC@{t}" for t in range(90, 100)] + ["AUGRC", "F1_present"])
UNCERTAINTY_TYPES = ("softmax_response", "entropy", "kl_disagreement")
SINGLE_UNCERTAINTY_TYPES = ("softmax_response", "entropy")     # kl_disagreement needs two members
# Every spread this project reports (stage 8's std rows, the report's ± and its shaded bands) is the sample
# standard deviation (ddof = 1) over subsets, seeds or duos; one value has none.
SPREAD_DDOF = 1
KL_WEIGHT = 0.1
ECE_BINS = 15
_BLOCK_ELEMENTS = 131072  # float64 entries per row block (1 MiB): stays in L2 cache, measured fastest
_POOL: ThreadPoolExecutor | None = None


# From this many entries a matrix's exponentials go through torch's vectorised float64 exp when torch is
# installed: numpy's is scalar on CPUs without AVX-512 (measured ~9 ns an entry against torch's ~3 ns on a
# 2-core AMD EPYC), which made an ImageNet-size duo 2.4x slower; importing torch (~1.5 s, once per process)
# is repaid within one such duo. Smaller matrices (iWildCam, Caltech, every online batch) never import torch.
# DUOS_NUMPY_ONLY=1 keeps numpy everywhere. Both give the same values to 2 ulp.
ACCELERATE_ENTRIES = 1 << 23         # 8.4M: ImageNet's test (47.5M) and V2 (10M); not iWildCam's OOD test (7.8M)


def _vectorised_exp():
    """torch's exp on numpy arrays (zero-copy), or None when numpy's is to be used."""
    if os.environ.get("DUOS_NUMPY_ONLY") == "1":
        return None
    try:
        import torch
    except ImportError:
        return None

    def exp(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        out = np.empty_like(x) if out is None else out
        torch.exp(torch.from_numpy(x), out=torch.from_numpy(out))
        return out
    return exp


def map_row_blocks(n: int, num_classes: int, work) -> list:
    """[work(rows, exp) for consecutive row blocks of an [n, num_classes] matrix], in order, spread over the
    CPU cores (numpy's ufuncs and reductions release the GIL, so threads run in parallel). `exp` is the
    exponential to use: np.exp, or for a matrix of ACCELERATE_ENTRIES or more, torch's vectorised one."""
    step = max(1, _BLOCK_ELEMENTS // max(num_classes, 1))
    blocks = [slice(start, start + step) for start in range(0, n, step)]
    exp = _vectorised_exp() if n * num_classes >= ACCELERATE_ENTRIES else None
    if exp is None:
        return _run_blocks(blocks, lambda rows: work(rows, np.exp))
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                # the row blocks are the parallelism: no nested thread pools
    try:
        return _run_blocks(blocks, lambda rows: work(rows, exp))
    finally:
        torch.set_num_threads(threads)


def _run_blocks(blocks: list[slice], call) -> list:
    global _POOL
    if len(blocks) < 4:
        return [call(rows) for rows in blocks]
    if _POOL is None:
        _POOL = ThreadPoolExecutor(min(8, len(os.sched_getaffinity(0))), thread_name_prefix="metrics")
    return list(_POOL.map(call, blocks))


class WeightedLogits:
    """The logit matrix z = sum_j weight_j * member_j, evaluated lazily one row block at a time.

    Lets duo modes and temperature-scaled members be scored without materialising [N, K] copies.
    Members are numpy arrays (or anything `np.asarray` accepts, e.g. CPU tensors).
    """

    def __init__(self, members, weights):
        self.members = [np.asarray(m) for m in members]
        self.weights = [float(w) for w in weights]
        if len({m.shape for m in self.members}) != 1 or self.members[0].ndim != 2:
            raise ValueError("members must share one [N, K] shape")

    @property
    def shape(self) -> tuple[int, int]:
        return self.members[0].shape

    def block(self, rows: slice) -> np.ndarray:
        """A float64 copy of z[rows] (callers modify blocks in place)."""
        out = self.members[0][rows].astype(np.float64)
        if self.weights[0] != 1.0:
            out *= self.weights[0]
        for member, weight in zip(self.members[1:], self.weights[1:]):
            term = member[rows].astype(np.float64)
            term *= weight
            out += term
        return out

    def gather(self, index: np.ndarray) -> np.ndarray:
        rows = np.arange(self.shape[0])
        index = np.asarray(index, dtype=np.int64)
        return sum(w * m[rows, index].astype(np.float64) for m, w in zip(self.members, self.weights))

    def materialise(self) -> np.ndarray:
        return self.block(slice(None))


class ProbabilityMixture:
    """log p for p = sum_j weight_j * softmax(scale_j * member_j), one row block at a time: probability
    averaging (default weights 1/M) where WeightedLogits averages logits. Log-probabilities serve as logits
    (softmax(log p) = p), so every measure and metric takes either."""

    def __init__(self, members, scales, weights=None):
        self.members = [np.asarray(m) for m in members]
        self.scales = [float(a) for a in scales]
        self.weights = [1.0 / len(self.members)] * len(self.members) if weights is None else [float(w) for w in weights]
        if len({m.shape for m in self.members}) != 1 or self.members[0].ndim != 2:
            raise ValueError("members must share one [N, K] shape")
        if len(self.scales) != len(self.members) or len(self.weights) != len(self.members):
            raise ValueError("one scale and one weight per member")
        self._normalizers: list[np.ndarray] | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.members[0].shape

    def _terms(self):
        return [(m, a, math.log(w)) for m, a, w in zip(self.members, self.scales, self.weights) if w > 0]

    def block(self, rows: slice) -> np.ndarray:
        out = None
        for member, scale, log_weight in self._terms():
            term = member[rows].astype(np.float64)
            term *= scale
            term -= logsumexp_rows(term)[:, None]
            term += log_weight
            out = term if out is None else np.logaddexp(out, term, out=out)
        return out

    def gather(self, index: np.ndarray) -> np.ndarray:
        if self._normalizers is None:
            self._normalizers = [log_normalizer(WeightedLogits([m], [a])) for m, a, _ in self._terms()]
        rows = np.arange(self.shape[0])
        index = np.asarray(index, dtype=np.int64)
        out = None
        for (member, scale, log_weight), normalizer in zip(self._terms(), self._normalizers):
            term = scale * member[rows, index].astype(np.float64) - normalizer + log_weight
            out = term if out is None else np.logaddexp(out, term)
        return out

    def materialise(self) -> np.ndarray:
        return self.block(slice(None))


def as_weighted(logits) -> WeightedLogits | ProbabilityMixture:
    return logits if isinstance(logits, (WeightedLogits, ProbabilityMixture)) else WeightedLogits([logits], [1.0])


@dataclass
class SoftmaxStats:
    """Per-row statistics of p = softmax(logits), all float64 numpy arrays of length N.

    `rest` = sum_{k != argmax} exp(l_k - l_max), so max p = 1 / (1 + rest) and 1 - max p =
    rest / (1 + rest) keep full relative precision even when max p rounds to 1.0.
    """
    argmax: np.ndarray                # int64, first index of the maximum
    rest: np.ndarray
    log_norm: np.ndarray              # logsumexp(logits)
    sum_sq_others: np.ndarray         # sum_{k != argmax} p_k^2 (kept apart: sum_k p_k^2 rounds to 1 near certainty)
    num_classes: int
    entropy: np.ndarray | None = None  # H(p) in nats, when computed

    @property
    def confidence(self) -> np.ndarray:
        return 1.0 / (1.0 + self.rest)

    @property
    def sum_sq(self) -> np.ndarray:
        """sum_k p_k^2."""
        return self.confidence ** 2 + self.sum_sq_others


def softmax_stats(logits, with_entropy: bool = True) -> SoftmaxStats:
    """One float64 pass over [N, K] logits (numpy or WeightedLogits; log-probs work the same).

    `with_entropy=False` skips one of the four reductions when H(p) is not needed.
    """
    z = as_weighted(logits)
    n, k = z.shape
    rest, sum_sq_rest, weighted_shift, row_max = (np.zeros(n) for _ in range(4))
    argmax = np.zeros(n, dtype=np.int64)

    def work(rows: slice, exp) -> None:
        block = z.block(rows)
        top = block.argmax(axis=1)
        at = (np.arange(len(top)), top)
        row_max[rows] = block[at]
        block -= row_max[rows, None]                # shifted logits d = z - max, d[argmax] = 0
        expd = exp(block)
        expd[at] = 0.0                              # leave out the max term (exactly 1)
        rest[rows] = expd.sum(axis=1)
        if with_entropy:
            weighted_shift[rows] = np.einsum("ij,ij->i", block, expd)
        sum_sq_rest[rows] = np.einsum("ij,ij->i", expd, expd)
        argmax[rows] = top

    map_row_blocks(n, k, work)
    norm = 1.0 + rest
    log1p_rest = np.log1p(rest)
    return SoftmaxStats(argmax=argmax, rest=rest, log_norm=row_max + log1p_rest,
                        sum_sq_others=sum_sq_rest / norm ** 2, num_classes=k,
                        entropy=log1p_rest - weighted_shift / norm if with_entropy else None)


def logsumexp_rows(block: np.ndarray, exp=np.exp) -> np.ndarray:
    """logsumexp over each row of a float64 block."""
    top = block.max(axis=1, keepdims=True)
    return top[:, 0] + np.log(exp(block - top).sum(axis=1))


def log_prob_at(logits, stats: SoftmaxStats, index: np.ndarray) -> np.ndarray:
    """log p[i, index[i]]; at the argmax -log(1 + rest), which keeps its precision when p rounds to 1."""
    index = np.asarray(index, dtype=np.int64)
    out = as_weighted(logits).gather(index) - stats.log_norm
    top = index == stats.argmax
    out[top] = -np.log1p(stats.rest[top])
    return out


# ----------------------------------------------------------------------------- uncertainty measures

def softmax_response(logits, stats: SoftmaxStats, at: np.ndarray | None = None) -> np.ndarray:
    """1 - p[at] (default at = argmax p, i.e. 1 - max p), precise near confidence 1."""
    top = stats.rest / (1.0 + stats.rest)
    if at is None:
        return top
    at = np.asarray(at, dtype=np.int64)
    return np.where(at == stats.argmax, top, -np.expm1(log_prob_at(logits, stats, at)))


def entropy(stats: SoftmaxStats) -> np.ndarray:
    if stats.entropy is None:
        raise ValueError("these statistics were computed with with_entropy=False")
    return stats.entropy


def log_normalizer(logits) -> np.ndarray:
    """logsumexp of every row (float64), one pass."""
    z = as_weighted(logits)
    n, k = z.shape
    out = np.zeros(n)

    def work(rows: slice, exp) -> None:
        out[rows] = logsumexp_rows(z.block(rows), exp)

    map_row_blocks(n, k, work)
    return out


def kl_divergence(logits_p, logits_q, log_normalizer_q: np.ndarray | None = None) -> np.ndarray:
    """KL(p || q) per row for p = softmax(logits_p), q = softmax(logits_q): one fused float64 pass.
    `log_normalizer_q` (logsumexp of logits_q's rows, when the caller has it) saves one exp per entry."""
    zp, zq = as_weighted(logits_p), as_weighted(logits_q)
    n, k = zp.shape
    kl = np.zeros(n)

    def work(rows: slice, exp) -> None:
        p_block, q_block = zp.block(rows), zq.block(rows)
        lse_q = logsumexp_rows(q_block, exp) if log_normalizer_q is None else log_normalizer_q[rows]
        q_block -= p_block                                    # z_q - z_p
        top = p_block.max(axis=1, keepdims=True)
        p_block -= top
        probs = exp(p_block, out=p_block)
        norm = probs.sum(axis=1)
        # KL = E_p[z_p - z_q] - logsumexp(z_p) + logsumexp(z_q)
        kl[rows] = -np.einsum("ij,ij->i", q_block, probs) / norm - (top[:, 0] + np.log(norm)) + lse_q

    map_row_blocks(n, k, work)
    return np.maximum(kl, 0.0)


def kl_disagreement(base_uncertainty: np.ndarray, kl_small_large: np.ndarray, weight: float = KL_WEIGHT) -> np.ndarray:
    """The official README's 'confidence + inter-model disagreement': u + weight * KL(p_small || p_large)."""
    return base_uncertainty + weight * kl_small_large


# ----------------------------------------------------------------------------- metrics

def accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
    return float(np.mean(np.asarray(labels) == np.asarray(predictions)))


def macro_f1(labels: np.ndarray, predictions: np.ndarray, num_classes: int | None = None,
             present_only: bool = False) -> float:
    """Macro F1 over the union of labels and predictions (sklearn's default), or over the classes
    present in `labels` (WILDS' convention) when `present_only`."""
    labels = np.asarray(labels, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    k = int(num_classes or max(labels.max(), predictions.max()) + 1)
    true_count = np.bincount(labels, minlength=k)
    pred_count = np.bincount(predictions, minlength=k)
    tp = np.bincount(labels[labels == predictions], minlength=k)
    denom = true_count + pred_count
    f1 = np.divide(2.0 * tp, denom, out=np.zeros(k), where=denom > 0)
    chosen = true_count > 0 if present_only else denom > 0
    return float(f1[chosen].mean())


def brier_rows(stats: SoftmaxStats, labels: np.ndarray, label_log_prob: np.ndarray) -> np.ndarray:
    """Per row, sum_k (p_ik - onehot_ik)^2 / K = [(1 - p_iy)^2 + sum_{k != y} p_ik^2] / K, each term computed
    without cancellation (1 - p_y from `rest` when y is the argmax, p_y <= 1/2 otherwise)."""
    at_top = np.asarray(labels) == stats.argmax
    label_prob = np.exp(label_log_prob)
    one_minus = np.where(at_top, stats.rest / (1.0 + stats.rest), -np.expm1(label_log_prob))
    others = np.where(at_top, stats.sum_sq_others, stats.sum_sq - label_prob ** 2)
    return (one_minus ** 2 + others) / stats.num_classes


def brier_score(stats: SoftmaxStats, labels: np.ndarray, label_log_prob: np.ndarray) -> float:
    """Mean over N*K entries of (p - onehot)^2."""
    return float(np.mean(brier_rows(stats, labels, label_log_prob)))


def nll(label_log_prob: np.ndarray) -> float:
    return float(-np.mean(label_log_prob))


def ece_bin_index(confidence: np.ndarray, n_bins: int = ECE_BINS) -> np.ndarray:
    """The equal-width bin (lo, hi] of each confidence, -1 for one outside (0, 1] (which no bin holds)."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.searchsorted(edges, np.asarray(confidence, dtype=np.float64), side="left") - 1   # edges[b] < c <= edges[b+1]
    return np.where((bins >= 0) & (bins < n_bins), bins, -1)


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Equal-width bins (lo, hi]; sum_b |sum conf_b - sum correct_b| / N."""
    confidence = np.asarray(confidence, dtype=np.float64)
    bins = ece_bin_index(confidence, n_bins)
    inside = bins >= 0
    conf_sum = np.bincount(bins[inside], weights=confidence[inside], minlength=n_bins)
    correct_sum = np.bincount(bins[inside], weights=np.asarray(correct, dtype=np.float64)[inside], minlength=n_bins)
    return float(np.abs(conf_sum - correct_sum).sum() / len(confidence))


def cp_auroc(correct: np.ndarray, uncertainty: np.ndarray, order: np.ndarray | None = None) -> float:
    """ROC AUC of 'prediction correct' scored by -uncertainty (ties count 1/2); NaN if one class."""
    correct = np.asarray(correct, dtype=bool)
    n_pos = int(correct.sum())
    n_neg = len(correct) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(uncertainty, kind="stable") if order is None else order
    u_sorted = np.asarray(uncertainty)[order]
    pos_sorted = correct[order]
    starts = np.flatnonzero(np.r_[True, u_sorted[1:] != u_sorted[:-1]])
    pos_in_group = np.add.reduceat(pos_sorted.astype(np.int64), starts)
    neg_in_group = np.diff(np.r_[starts, len(u_sorted)]) - pos_in_group
    neg_after = n_neg - np.cumsum(neg_in_group)        # negatives with strictly larger uncertainty
    wins = float(np.dot(pos_in_group, neg_after)) + 0.5 * float(np.dot(pos_in_group, neg_in_group))
    return wins / (n_pos * n_neg)


def selective_metrics(correct: np.ndarray, uncertainty: np.ndarray) -> dict[str, float]:
    """CP_AUROC, AURC, E-AURC, SAC@90..99 and AUGRC for one (correctness, uncertainty) pair."""
    correct = np.asarray(correct, dtype=bool)
    n = len(correct)
    order = np.argsort(uncertainty, kind="stable")
    errors = np.cumsum(~correct[order])
    k = np.arange(1, n + 1)
    aurc = float(np.mean(errors / k))
    n_correct = int(correct.sum())
    oracle = float(np.mean(np.maximum(k - n_correct, 0) / k))
    result = {"CP_AUROC": cp_auroc(correct, uncertainty, order), "AURC": aurc, "E-AURC": aurc - oracle}
    for t in range(90, 100):
        allowed = np.flatnonzero(100 * errors <= (100 - t) * k)
        result[f"SAC@{t}"] = float((allowed[-1] + 1) / n) if len(allowed) else 0.0
    result["AUGRC"] = float(np.mean(errors) / n)
    return result


def classification_metrics(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> dict[str, float]:
    return {"Acc": accuracy(labels, predictions),
            "F1": macro_f1(labels, predictions, num_classes),
            "F1_present": macro_f1(labels, predictions, num_classes, present_only=True)}


def calibration_metrics(logits, labels: np.ndarray, stats: SoftmaxStats | None = None) -> dict[str, float]:
    """Brier, NLL and ECE of p = softmax(logits); they depend on p only, not on the mode's prediction."""
    stats = stats or softmax_stats(logits)
    label_log_prob = log_prob_at(logits, stats, labels)
    return {"Brier": brier_score(stats, labels, label_log_prob), "NLL": nll(label_log_prob),
            "ECE": expected_calibration_error(stats.confidence, stats.argmax == labels)}


def compute_metrics(logits, labels: np.ndarray, predictions: np.ndarray | None = None,
                    uncertainty: np.ndarray | None = None, stats: SoftmaxStats | None = None) -> dict[str, float]:
    """Every metric column for one scored prediction set, in the results files' column order.

    `predictions` default to argmax p; `uncertainty` defaults to the softmax response 1 - max p.
    """
    labels = np.asarray(labels, dtype=np.int64)
    stats = stats or softmax_stats(logits, with_entropy=False)
    predictions = stats.argmax if predictions is None else np.asarray(predictions, dtype=np.int64)
    uncertainty = softmax_response(logits, stats) if uncertainty is None else np.asarray(uncertainty)
    row = {}
    row.update(classification_metrics(labels, predictions, stats.num_classes))
    row.update(calibration_metrics(logits, labels, stats))
    row.update(selective_metrics(predictions == labels, uncertainty))
    return {name: row[name] for name in METRIC_COLUMNS}


# ----------------------------------------------------------------------------- curves (for figures)

def risk_coverage_curve(correct: np.ndarray, uncertainty: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(coverage k/N, selective risk errors_k/k) for k = 1..N, most confident first (stable order)."""
    order = np.argsort(uncertainty, kind="stable")
    errors = np.cumsum(~np.asarray(correct, dtype=bool)[order])
    k = np.arange(1, len(order) + 1)
    return k / len(order), errors / k


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS):
    """Per ECE bin (lo, hi]: mean confidence, accuracy and count (NaN for empty bins)."""
    confidence = np.asarray(confidence, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    counts = np.bincount(bins, minlength=n_bins)
    conf = np.bincount(bins, weights=confidence, minlength=n_bins)
    acc = np.bincount(bins, weights=np.asarray(correct, dtype=np.float64), minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return edges, conf / counts, acc / counts, counts
