"""utils/maths/shift_detection.py against brute force (every threshold tried), ties included; load_data/corruptions.py:
deterministic under its seed, stronger with severity, names that round-trip."""
import itertools

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from load_data import corruptions
from utils.maths.bootstrap import draw_counts
from utils.maths.shift_detection import detection_metrics, resampled_detection, weighted_detection


def brute_force(score_in, score_out) -> dict:
    pairs = [(o > i) + 0.5 * (o == i) for o in score_out for i in score_in]
    thresholds = sorted(set(score_in) | set(score_out), reverse=True)
    aupr, recall_before, fpr95 = 0.0, 0.0, None
    for t in thresholds:                              # flag every sample at or above t
        tp = sum(o >= t for o in score_out)
        fp = sum(i >= t for i in score_in)
        recall = tp / len(score_out)
        aupr += (recall - recall_before) * tp / (tp + fp)
        recall_before = recall
        if fpr95 is None and recall >= 0.95:
            fpr95 = fp / len(score_in)
    return {"AUROC": float(np.mean(pairs)), "AUPR": aupr, "FPR95": fpr95}


@pytest.mark.parametrize("seed, rounding", [(0, None), (1, 1), (2, 0)])      # no ties, some, many
def test_detection_metrics_equal_brute_force(seed, rounding):
    rng = np.random.default_rng(seed)
    score_in, score_out = rng.normal(0, 1, 60), rng.normal(0.8, 1, 45)
    if rounding is not None:
        score_in, score_out = np.round(score_in, rounding), np.round(score_out, rounding)
    assert detection_metrics(score_in, score_out) == pytest.approx(brute_force(score_in, score_out), abs=1e-12)


def test_identical_distributions_give_half_and_counts_weight_samples():
    scores = np.random.default_rng(3).normal(size=200)
    assert detection_metrics(scores, scores)["AUROC"] == pytest.approx(0.5)
    assert detection_metrics(np.zeros(10), np.zeros(7)) == pytest.approx({"AUROC": 0.5, "AUPR": 7 / 17, "FPR95": 1.0})
    rng = np.random.default_rng(4)
    score_in, score_out = np.round(rng.normal(size=30), 1), np.round(rng.normal(1, 1, size=20), 1)
    counts_in, counts_out = rng.integers(0, 3, (5, 30)), rng.integers(1, 3, (5, 20))
    counts_in[:, 0] += 1
    found = weighted_detection(score_in, score_out, counts_in, counts_out)
    for r in range(5):                       # a count of k is the sample written k times
        expected = detection_metrics(np.repeat(score_in, counts_in[r]), np.repeat(score_out, counts_out[r]))
        assert {k: v[r] for k, v in found.items()} == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("rounding", [None, 1, 0])                  # no ties, some, many
def test_the_compiled_walk_gives_the_reference_numbers(monkeypatch, rounding):
    """The bootstrap's compiled walks against `weighted_detection` on the same draws: AUROC and FPR95 bitwise,
    AUPR to rounding; splits of different sizes, ties, samples drawn zero times, counts over 255 (int32), and
    resamples walked in groups of any width."""
    from utils.maths import bootstrap_kernels
    rng = np.random.default_rng(5)
    score_in, score_out = rng.normal(0, 1, 300), rng.normal(0.7, 1.5, 40)
    score_in[:3] = 10.0, 11.0, 12.0                 # test samples ranked first
    if rounding is not None:
        score_in, score_out = np.round(score_in, rounding), np.round(score_out, rounding)
    counts_in, counts_out = draw_counts(300, 200, seed=0), draw_counts(40, 200, seed=1)
    assert counts_in.dtype == np.uint8 and (counts_in == 0).mean() > 0.3
    skewed = rng.integers(0, 600, (40, 3)).astype(np.int32)                # counts_in uint8, counts_out int32
    skewed[:, 0] = 0                               # no shifted sample drawn: every threshold reaches the TPR level
    cases = ((counts_in, counts_out), (np.ascontiguousarray(counts_in[:, :3]), skewed))
    for (drawn_in, drawn_out), lanes in itertools.product(cases, (1, 7, 64)):
        monkeypatch.setattr(bootstrap_kernels, "lanes_for", lambda resamples, width=lanes: width)
        found = resampled_detection(score_in, score_out, drawn_in, drawn_out)      # samples along axis 0
        with np.errstate(divide="ignore", invalid="ignore"):         # 0 / 0 where no shifted sample was drawn
            expected = weighted_detection(score_in, score_out, drawn_in.T, drawn_out.T)
        assert np.array_equal(found["AUROC"], expected["AUROC"], equal_nan=True)
        assert np.array_equal(found["FPR95"], expected["FPR95"])
        np.testing.assert_allclose(found["AUPR"], expected["AUPR"], rtol=0, atol=1e-14, equal_nan=True)


def natural_image(size: int = 224) -> Image.Image:
    """Smooth random structure at three scales: natural-image statistics, on which every corruption's distance to
    the clean image grows with severity."""
    rng = np.random.default_rng(0)
    field = np.stack([ndimage.gaussian_filter(rng.normal(size=(size, size)), s) for s in (2, 4, 8)], -1)
    field = (field - field.min()) / (field.max() - field.min())
    return Image.fromarray((field * 200 + 20).astype(np.uint8))


@pytest.mark.parametrize("name", sorted(corruptions.CORRUPTIONS))
def test_each_corruption_is_seeded_and_grows_with_severity(name):
    image = natural_image()
    clean = np.asarray(image, np.float64)
    first = np.asarray(corruptions.corrupt(image, name, 3, seed=1))
    assert np.array_equal(first, np.asarray(corruptions.corrupt(image, name, 3, seed=1)))      # same seed: same image
    distance = [np.abs(np.asarray(corruptions.corrupt(image, name, s, seed=1), np.float64) - clean).mean()
                for s in corruptions.SEVERITIES]
    assert all(np.diff(distance) > 0), distance                      # mean absolute change grows with severity
    if name.endswith("noise"):                                        # random ones differ with the seed
        assert not np.array_equal(first, np.asarray(corruptions.corrupt(image, name, 3, seed=2)))


def test_split_names_round_trip():
    for name in corruptions.CORRUPTIONS:
        for severity in corruptions.SEVERITIES:
            assert corruptions.parse_split_name(corruptions.split_name(name, severity)) == (name, severity)
    assert corruptions.parse_split_name("ood_test") is None and corruptions.parse_split_name("c_fog_3") is None
    assert corruptions.corrupt(Image.new("L", (28, 28), 128), "contrast", 2).mode == "L"
