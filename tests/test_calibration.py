"""utils/stages/calibration.py: the rows stages 2 and 3 write, on logits whose temperature is known."""
import numpy as np
import pytest

from tests.helpers import make_duo_logits
from utils.errors import UserError
from utils.files.prediction_io import PredictionSet, Split
from utils.stages import calibration


def scaled_set(temperature: float, seed: int = 0) -> PredictionSet:
    """Logits drawn calibrated (labels sampled from softmax(z)), then multiplied by `temperature`: the
    fitted temperature must come back close to it."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(20000, 5)) * 2
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    labels = (p.cumsum(1) > rng.random((len(z), 1))).argmax(1)
    return PredictionSet("m", {"val": Split((z * temperature).astype(np.float32), labels, np.arange(len(z)))})


def test_single_temperature_row_recovers_the_scale():
    row = calibration.single_temperature_row(scaled_set(2.5))
    assert row["temperature"] == pytest.approx(2.5, rel=0.05)
    assert row["nll_after"] < row["nll_before"] and row["n_val"] == 20000


def test_duo_weights_row_refuses_a_model_paired_with_itself():
    sets = make_duo_logits()
    with pytest.raises(UserError, match="same model"):
        calibration.duo_weights_row(sets["large"], sets["large"])
    row = calibration.duo_weights_row(sets["large"], sets["small"])
    assert row["model_large"] == "large" and row["temperature_large"] > 0


def test_separable_validation_is_an_error():
    labels = np.arange(50) % 3
    logits = np.eye(3)[labels].astype(np.float32) * 4
    with pytest.raises(UserError, match="keeps falling"):
        calibration.single_temperature_row(PredictionSet("m", {"val": Split(logits, labels, np.arange(50))}))
