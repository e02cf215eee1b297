import numpy as np
import pytest
import torch
from scipy.special import log_softmax, softmax
from sklearn.metrics import accuracy_score, brier_score_loss, f1_score, log_loss, roc_auc_score
from torchmetrics.functional.classification import multiclass_calibration_error

from utils.maths import uncertainty_metrics as um

SHAPES = [(50, 2), (500, 3), (2000, 10), (3000, 100), (400, 1000)]


def random_scored(n, k, seed, scale=2.0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=(n, k)) * rng.uniform(0.5, 1.5) * scale).astype(dtype)
    labels = np.where(rng.random(n) < 0.6, logits.argmax(1), rng.integers(0, k, n))
    return logits, labels


def reference_ece(conf, correct, n_bins=15):
    """Plain loop over right-closed bins (lo, hi], the official convention."""
    edges = np.linspace(0, 1, n_bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            total += inside.mean() * abs(conf[inside].mean() - correct[inside].mean())
    return total


@pytest.mark.parametrize("n,k", SHAPES)
def test_metrics_equal_sklearn(n, k):
    logits, labels = random_scored(n, k, seed=n + k)
    metrics = um.compute_metrics(logits, labels)
    probs = softmax(logits.astype(np.float64), axis=1)
    preds = probs.argmax(1)
    onehot = np.eye(k)[labels]
    assert metrics["Acc"] == pytest.approx(accuracy_score(labels, preds), abs=1e-12)
    assert metrics["F1"] == pytest.approx(f1_score(labels, preds, average="macro"), abs=1e-9)
    assert metrics["F1_present"] == pytest.approx(
        f1_score(labels, preds, average="macro", labels=np.unique(labels)), abs=1e-9)
    assert metrics["Brier"] == pytest.approx(brier_score_loss(onehot.ravel(), probs.ravel()), abs=1e-9)
    assert metrics["NLL"] == pytest.approx(log_loss(labels, probs, labels=range(k)), abs=1e-9)
    exact_nll = -log_softmax(logits.astype(np.float64), axis=1)[np.arange(n), labels].mean()
    assert metrics["NLL"] == pytest.approx(exact_nll, abs=1e-12)
    assert metrics["CP_AUROC"] == pytest.approx(roc_auc_score(preds == labels, probs.max(1)), abs=1e-9)
    conf = probs.max(1)
    assert metrics["ECE"] == pytest.approx(reference_ece(conf, preds == labels), abs=1e-9)


@pytest.mark.parametrize("n,k", SHAPES[1:])
def test_ece_matches_torchmetrics_where_conventions_agree(n, k):
    # torchmetrics bins [lo, hi) and casts to float32; on continuous confidences (no value on an
    # edge, none equal to 1.0) it is the same estimator, up to float32 rounding.
    logits, labels = random_scored(n, k, seed=7 * n)
    stats = um.softmax_stats(logits)
    assert stats.confidence.max() < 1.0
    ours = um.expected_calibration_error(stats.confidence, stats.argmax == labels)
    probs = torch.softmax(torch.from_numpy(logits.astype(np.float64)), dim=1)
    theirs = multiclass_calibration_error(probs, torch.from_numpy(labels), num_classes=k, n_bins=15, norm="l1")
    assert ours == pytest.approx(float(theirs), abs=1e-6)


def test_ece_hand_computed_bins_with_edges_and_one():
    edges = np.linspace(0, 1, 16)
    conf = np.array([edges[1], edges[2], 1.0, 0.95, 0.5, 0.9])
    correct = np.array([1, 0, 1, 0, 0, 1], dtype=bool)
    # bins (lo, hi]: edges[1] -> bin 0 alone; edges[2] -> bin 1 alone; 1.0 and 0.95 share bin 14;
    # 0.5 -> bin 7; 0.9 -> bin 13.
    expected = (abs(edges[1] - 1) + abs(edges[2] - 0) + abs(1.0 + 0.95 - 1) + abs(0.5 - 0) + abs(0.9 - 1)) / 6
    assert um.expected_calibration_error(conf, correct) == pytest.approx(expected, abs=1e-15)
    # An edge value counts in the lower bin: moving it into the next bin would change the result.
    shifted = (abs(edges[1] + edges[2] - 1) + abs(1.0 + 0.95 - 1) + abs(0.5 - 0) + abs(0.9 - 1)) / 6
    assert expected != pytest.approx(shifted)


def test_selective_metrics_hand_computed():
    correct = np.array([1, 0, 1, 1, 0], dtype=bool)
    uncertainty = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    m = um.selective_metrics(correct, uncertainty)
    aurc = (0 + 1 / 2 + 1 / 3 + 1 / 4 + 2 / 5) / 5
    oracle = (0 + 0 + 0 + 1 / 4 + 2 / 5) / 5
    assert m["AURC"] == pytest.approx(aurc, abs=1e-15)
    assert m["E-AURC"] == pytest.approx(aurc - oracle, abs=1e-15)
    assert m["AUGRC"] == pytest.approx((0 + 1 + 1 + 1 + 2) / 5 / 5, abs=1e-15)
    assert m["SAC@90"] == pytest.approx(1 / 5)        # only k=1 has risk <= 0.10
    # CP_AUROC: correct at 0.1, 0.3, 0.4; wrong at 0.2, 0.5 -> 4 of the 6 (correct, wrong) pairs are ordered
    assert m["CP_AUROC"] == pytest.approx(4 / 6)


def test_sac_threshold_is_decided_exactly():
    # 7 errors in 100, all least confident: risk at full coverage is exactly 0.07 = (100 - 93) / 100.
    # In floating point 1 - 0.93 = 0.06999999999999995 < 0.07, which would wrongly reject it.
    correct = np.ones(100, dtype=bool)
    correct[-7:] = False
    m = um.selective_metrics(correct, np.linspace(0, 1, 100))
    assert m["SAC@93"] == 1.0
    assert m["SAC@94"] == pytest.approx(0.98)           # k=98: 5 errors, 500 <= 6 * 98; k=99: 600 > 594
    assert m["SAC@90"] == 1.0


def test_ties_are_broken_by_sample_order():
    correct = np.array([0, 1, 1, 0], dtype=bool)
    tied = np.zeros(4)
    m = um.selective_metrics(correct, tied)
    assert m["AURC"] == pytest.approx((1 / 1 + 1 / 2 + 1 / 3 + 2 / 4) / 4)
    assert m["CP_AUROC"] == 0.5                          # ties count one half


@pytest.mark.parametrize("all_correct", [True, False])
def test_cp_auroc_nan_with_one_class(all_correct):
    correct = np.full(10, all_correct)
    assert np.isnan(um.selective_metrics(correct, np.linspace(0, 1, 10))["CP_AUROC"])


def test_confidence_saturation_keeps_order():
    # float32 softmax would round both to 1.0 and tie them; the float64 `rest` keeps them apart.
    logits = np.array([[40.0, 0.0, 0.0], [30.0, 0.0, 0.0]], dtype=np.float32)
    stats = um.softmax_stats(logits)
    response = um.softmax_response(logits, stats)
    assert 0 < response[0] < response[1]
    assert response[1] == pytest.approx(2 * np.exp(-30.0), rel=1e-12)


def test_uncertainty_measures_against_direct_formulas():
    logits, labels = random_scored(300, 6, seed=3, dtype=np.float64)
    other, _ = random_scored(300, 6, seed=4, dtype=np.float64)
    p, q = softmax(logits, axis=1), softmax(other, axis=1)
    stats = um.softmax_stats(logits)
    assert np.allclose(um.entropy(stats), -(p * np.log(p)).sum(1), atol=1e-12)
    assert np.allclose(um.softmax_response(logits, stats), 1 - p.max(1), atol=1e-12)
    at = labels
    assert np.allclose(um.softmax_response(logits, stats, at=at), 1 - p[np.arange(300), at], atol=1e-12)
    kl = um.kl_divergence(logits, other)
    assert np.allclose(kl, (p * (np.log(p) - np.log(q))).sum(1), atol=1e-12)
    assert np.allclose(um.kl_disagreement(um.softmax_response(logits, stats), kl),
                       1 - p.max(1) + 0.1 * kl, atol=1e-12)


def test_weighted_logits_equal_materialised():
    a, labels = random_scored(200, 9, seed=5)
    b, _ = random_scored(200, 9, seed=6)
    lazy = um.WeightedLogits([a, b], [0.3, 1.7])
    dense = 0.3 * a.astype(np.float64) + 1.7 * b.astype(np.float64)
    assert um.compute_metrics(lazy, labels) == pytest.approx(um.compute_metrics(dense, labels), abs=1e-12)


def test_inputs_are_not_modified():
    logits, labels = random_scored(100, 4, seed=8, dtype=np.float64)
    before = logits.copy()
    um.compute_metrics(logits, labels)
    um.kl_divergence(logits, logits[::-1].copy())
    assert np.array_equal(logits, before)


def test_metric_columns_order():
    logits, labels = random_scored(100, 4, seed=9)
    assert list(um.compute_metrics(logits, labels)) == list(um.METRIC_COLUMNS)
    assert um.METRIC_COLUMNS[:8] == ["Acc", "F1", "Brier", "NLL", "ECE", "CP_AUROC", "AURC", "E-AURC"]
    assert um.METRIC_COLUMNS[-2:] == ["AUGRC", "F1_present"]


@pytest.mark.parametrize("gap", [5.0, 20.0, 40.0])
def test_brier_and_nll_keep_their_precision_near_certainty(gap):
    """With p_y close to 1, Brier and NLL are tiny; computed as differences of numbers near 1 they would
    lose every digit (and Brier could turn negative). Checked against 60-digit arithmetic."""
    import mpmath
    mpmath.mp.dps = 60
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 4))
    labels = rng.integers(0, 4, 50)
    logits[np.arange(50), labels] += gap
    exact_brier, exact_nll = mpmath.mpf(0), mpmath.mpf(0)
    for row, label in zip(logits, labels):
        e = [mpmath.e ** mpmath.mpf(float(v)) for v in row]
        p = [x / sum(e) for x in e]
        exact_brier += sum((p[k] - (k == label)) ** 2 for k in range(4))
        exact_nll -= mpmath.log(p[label])
    metrics = um.compute_metrics(logits, labels)
    assert metrics["Brier"] == pytest.approx(float(exact_brier / (50 * 4)), rel=1e-12, abs=0)
    assert metrics["NLL"] == pytest.approx(float(exact_nll / 50), rel=1e-12, abs=0)


def test_the_vectorised_exp_for_large_matrices_gives_the_same_metrics(monkeypatch):
    """Matrices of ImageNet size take torch's exp; forced on a small one here, every metric, uncertainty and
    KL must match numpy's to a few ulp."""
    rng = np.random.default_rng(3)
    logits, other = rng.normal(size=(3000, 50)) * 3, rng.normal(size=(3000, 50))
    labels = rng.integers(0, 50, 3000)
    reference = um.compute_metrics(logits, labels), um.entropy(um.softmax_stats(logits)), um.kl_divergence(logits, other)
    monkeypatch.setattr(um, "ACCELERATE_ENTRIES", 1)
    accelerated = um.compute_metrics(logits, labels), um.entropy(um.softmax_stats(logits)), um.kl_divergence(logits, other)
    assert accelerated[0] == pytest.approx(reference[0], rel=1e-13, abs=1e-15)
    np.testing.assert_allclose(accelerated[1], reference[1], rtol=1e-13)
    np.testing.assert_allclose(accelerated[2], reference[2], rtol=1e-11, atol=1e-15)
    monkeypatch.setenv("DUOS_NUMPY_ONLY", "1")
    assert um.compute_metrics(logits, labels) == reference[0]
