"""utils/stages/scoring.py: metric rows on inputs whose answer is known, and the overflow guard."""
import math

import numpy as np
import pytest

from tests.helpers import make_duo_logits
from utils.errors import UserError
from utils.maths import uncertainty_metrics as um
from utils.stages import scoring


def test_metrics_by_uncertainty_equals_compute_metrics_per_type():
    val = make_duo_logits()["large"].splits["test"]
    stats = um.softmax_stats(val.logits)
    uncertainties = {"softmax_response": um.softmax_response(val.logits, stats), "entropy": um.entropy(stats)}
    scored = scoring.metrics_by_uncertainty(val.logits, val.labels, stats.argmax, uncertainties, stats)
    for name, uncertainty in uncertainties.items():
        expected = um.compute_metrics(val.logits, val.labels, uncertainty=uncertainty)
        assert scored[name] == pytest.approx(expected, nan_ok=True)


def test_single_model_metrics_keeps_given_predictions():
    test = make_duo_logits()["large"].splits["test"]
    uniform = np.zeros_like(test.logits)                       # T = inf: every row uniform
    kept = test.logits.argmax(1)
    row = scoring.single_model_metrics(uniform, test.labels, ["softmax_response"], kept)["softmax_response"]
    assert row["Acc"] == pytest.approx(np.mean(kept == test.labels))
    assert row["NLL"] == pytest.approx(math.log(test.logits.shape[1]))


def test_check_scaled_logits_refuses_overflowing_weights():
    scoring.check_scaled_logits([10.0, 5.0], [0.5, 0.5], "ok")
    with pytest.raises(UserError, match="beyond float64"):
        scoring.check_scaled_logits([1e200, 1.0], [1e150, 0.0], "calibrated/x")
