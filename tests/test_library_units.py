"""Unit tests of the stage helpers (scoring, calibration rows), the report's arithmetic and the Ray Tune
glue, each on inputs whose answer is known."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

from tests.helpers import make_duo_logits, write_set
from train import tuning
from utils.cli.parsing import UserError
from utils.files import results, safe_io
from utils.files.prediction_io import PredictionSet, Split
from utils.maths import uncertainty_metrics as um
from utils.report import figures, paper_tables
from utils.stages import calibration, scoring

# ----------------------------------------------------------------------------- scoring

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


def test_queue_results_refuses_a_nan_and_upserts(tmp_path):
    row = {name: 0.5 for name in um.METRIC_COLUMNS}
    rows = [{**row, "model": "a", "wrapper": "w", "uncertainty_type": "u", "gflops": 1.0, "params": 1.0, "split": "test"}]

    def write():
        outputs = safe_io.Outputs()
        written = results.queue_results(outputs, tmp_path, "single_model", "d", rows)
        outputs.commit()
        return written
    written = write()
    assert written == [tmp_path / "evaluation_single_model_d.csv"]
    rows[0]["NLL"] = 0.25
    write()
    frame = pd.read_csv(written[0])
    assert len(frame) == 1 and frame.NLL.item() == 0.25 and list(frame.columns[:len(um.METRIC_COLUMNS)]) == \
        list(um.METRIC_COLUMNS)
    rows[0]["NLL"] = float("nan")
    with pytest.raises(UserError, match="NLL"):
        write()


def test_resolve_dataset(tmp_path, capsys):
    assert scoring.resolve_dataset("imagenet", ["x"], tmp_path) == "imagenet"
    assert scoring.resolve_dataset(None, ["iwildcam", None, "iwildcam"], tmp_path) == "iwildcam"
    with pytest.raises(UserError, match="several datasets"):
        scoring.resolve_dataset(None, ["a", "b"], tmp_path)
    (tmp_path / "caltech").mkdir()
    assert scoring.resolve_dataset(None, [None], tmp_path / "caltech") == "caltech"
    assert "do not record their dataset" in capsys.readouterr().err


def test_prediction_cache_keeps_the_most_recent(tmp_path):
    sets = make_duo_logits(models=("a", "b", "c"), quality=(1, 1, 1), scale=(1, 1, 1))
    paths = [write_set(pset, tmp_path) for pset in sets.values()]
    cache = scoring.PredictionCache(max_items=2)
    first = cache.get(paths[0])
    assert cache.get(paths[0]) is first
    cache.get(paths[1]), cache.get(paths[2])
    assert cache.get(paths[0]) is not first                      # evicted, read again


# ----------------------------------------------------------------------------- calibration rows

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


# ----------------------------------------------------------------------------- report arithmetic

@pytest.mark.parametrize("metric, value, base, expected", [
    ("Acc", 0.9, 0.8, 50.0),          # half the way from 0.8 to a perfect 1
    ("NLL", 0.6, 0.8, 25.0),          # a quarter lower
    ("ECE", 0.04, 0.02, -100.0),      # twice as high: worse
])
def test_relative_improvement(metric, value, base, expected):
    assert paper_tables.relative_improvement(value, base, metric) == pytest.approx(expected)


def test_markdown_table_and_flops_buckets():
    frame = pd.DataFrame({"model": ["a"], "NLL": [0.123456], "note": [None]})
    assert figures.markdown_table(frame, digits=2).splitlines() == ["| model | NLL | note |", "|---|---|---|",
                                                                     "| a | 0.12 |  |"]
    duos = pd.DataFrame({"model_large": ["L", "L", "L", "M"], "mode": ["asymmetric", "asymmetric", "uqonly", "asymmetric"],
                         "uncertainty_type": ["softmax_response"] * 4, "gflops_large": [4.1, 4.1, 4.1, 16.4],
                         "gflops_small": [0.41, 4.0, 2.0, 0.1], "gflops_balance": [0.1, 0.99, 0.5, 0.1 / 16.4]})
    # total FLOPs in units of a 4.1-GFLOPs reference: 1.1, 1.98 and (uqonly left out) 4.02; exactly 2x is bucket 2
    assert paper_tables.flops_buckets(duos, 4.1)["bucket"].tolist() == [1, 1, 4]
    assert paper_tables.flops_buckets(duos.assign(gflops_small=[4.1, 4.0, 2.0, 0.1]), 4.1)["bucket"].tolist() == [2, 1, 4]


# ----------------------------------------------------------------------------- Ray Tune glue

def test_default_resources_follow_the_hardware():
    expected_gpu = 1 if torch.cuda.is_available() else 0
    assert tuning.default_resources(None, None)["gpu"] == expected_gpu
    assert tuning.default_resources(3, 0.5) == {"cpu": 3, "gpu": 0.5}


def test_auth_token_source_order(monkeypatch, tmp_path):
    monkeypatch.setattr(tuning, "_TOKEN_FILE", tmp_path / "absent")
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    assert tuning.auth_token_source() is None
    token = tmp_path / "token"
    token.write_text("t")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    assert tuning.auth_token_source() == str(token)
    monkeypatch.setenv("RAY_AUTH_TOKEN", "secret")
    assert tuning.auth_token_source() == "RAY_AUTH_TOKEN"


def test_trial_state_and_best_weights(tmp_path):
    current, best = {"w": torch.ones(2)}, {"w": torch.zeros(2)}
    torch.save({"epoch": 3, "model": current, "best_state": best, "best_is_current": False, "best_metric": 0.5},
               tmp_path / "state.pt")
    saved = tuning.load_trial_state(tmp_path)
    assert torch.equal(tuning.best_weights(saved)["w"], best["w"])
    assert tuning.best_weights({**saved, "best_is_current": True}) is saved["model"]
    torch.save({"not": "a trial"}, tmp_path / "state.pt")
    with pytest.raises(UserError, match="not a trial checkpoint"):
        tuning.load_trial_state(tmp_path)


def test_pair_loader_splits_batches_for_the_library_predictive():
    from load_models.laplace_tools import PairLoader
    batches = [(torch.arange(8.0).reshape(8, 1), torch.arange(8), list(range(8))),
               (torch.arange(5.0).reshape(5, 1), torch.arange(5), list(range(5)))]

    class Loader(list):
        dataset = range(13)

    sizes = [len(y) for _, y in PairLoader(Loader(batches), "cpu", max_batch=3)]
    assert sizes == [3, 3, 2, 3, 2]
    assert [len(y) for _, y in PairLoader(Loader(batches), "cpu")] == [8, 5]


def test_one_spread_convention_everywhere():
    """The report's ± and stage 8's std rows are both the sample standard deviation (ddof = 1)."""
    assert paper_tables.cell([0.01, 0.03], "Acc") == f"2.00 ± {math.sqrt(2):.2f}"        # % with the sample std
    assert paper_tables.cell([0.0005], "Brier") == "5.00"                                 # x10^4, one value: no spread
    assert paper_tables.cell([float("nan"), 0.9], "CP_AUROC") == "90.00"
    assert scoring.SPREAD_DDOF == 1


def test_console_capture_sends_everything_to_the_log_and_show_to_the_screen(tmp_path):
    import subprocess
    import sys
    script = (
        "import os, subprocess, sys\n"
        "from utils.cli import console\n"
        f"with console.captured({str(tmp_path / 'step.log')!r}):\n"
        "    print('a python print')\n"
        "    print('to stderr', file=sys.stderr)\n"
        "    os.write(1, b'native write\\n')\n"
        "    subprocess.run([sys.executable, '-c', 'print(\"a child process\")'])\n"
        "    console.show('a trial line')\n"
        "print('after the step')\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["a trial line", "after the step"] and result.stderr == ""
    log = (tmp_path / "step.log").read_text().splitlines()
    assert set(log) == {"a python print", "to stderr", "native write", "a child process", "a trial line"}
