"""Property tests (hypothesis) for the metrics: invariances, bounds and agreement with sklearn."""
import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from sklearn.metrics import log_loss, roc_auc_score

from utils.maths import uncertainty_metrics as um


@st.composite
def scored(draw, min_n=2, max_n=60):
    n = draw(st.integers(min_n, max_n))
    k = draw(st.integers(2, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, k)) * draw(st.floats(0.1, 8.0))
    labels = rng.integers(0, k, n)
    return logits, labels, rng


@settings(max_examples=60, deadline=None)
@given(scored())
def test_row_permutation_invariance_without_ties(data):
    logits, labels, rng = data
    order = rng.permutation(len(labels))
    a = um.compute_metrics(logits, labels)
    b = um.compute_metrics(logits[order], labels[order])
    for key in a:
        assert np.isclose(a[key], b[key], atol=1e-12, equal_nan=True), key


@settings(max_examples=60, deadline=None)
@given(scored())
def test_selective_metrics_invariant_to_increasing_transforms(data):
    logits, labels, rng = data
    stats = um.softmax_stats(logits)
    correct = stats.argmax == labels
    u = um.softmax_response(logits, stats)
    base = um.selective_metrics(correct, u)
    for transformed in (np.log(u + 1e-3), 3 * u + 7, u ** 3):
        other = um.selective_metrics(correct, transformed)
        for key in ["CP_AUROC", "AURC", "E-AURC", "AUGRC"] + [f"SAC@{t}" for t in range(90, 100)]:
            assert np.isclose(base[key], other[key], atol=1e-12, equal_nan=True), key


@settings(max_examples=80, deadline=None)
@given(scored())
def test_bounds(data):
    logits, labels, _ = data
    m = um.compute_metrics(logits, labels)
    assert 0 <= m["ECE"] <= 1 and m["E-AURC"] >= -1e-15 and 0 <= m["AURC"] <= 1
    assert 0 <= m["Brier"] <= 2 and m["NLL"] >= 0 and 0 <= m["AUGRC"] <= 1
    assert all(0 <= m[f"SAC@{t}"] <= 1 for t in range(90, 100))
    assert m["SAC@90"] >= m["SAC@99"]


@settings(max_examples=60, deadline=None)
@given(scored(min_n=4))
def test_agrees_with_sklearn(data):
    logits, labels, _ = data
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    # sklearn clips probabilities at float64 eps; ours is the exact NLL, so compare away from the clip
    assume(p[np.arange(len(labels)), labels].min() > 1e-12)
    m = um.compute_metrics(logits, labels)
    assert np.isclose(m["NLL"], log_loss(labels, p, labels=range(logits.shape[1])), atol=1e-9)
    correct = p.argmax(1) == labels
    if 0 < correct.sum() < len(correct):
        assert np.isclose(m["CP_AUROC"], roc_auc_score(correct, p.max(1)), atol=1e-9)
