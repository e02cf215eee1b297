"""Corruption splits through every evaluation stage (2, 3, 4, 5 with the bootstrap, 7, 9), shift detection rows and
the report's severity curve against a hand computation."""
import numpy as np
import pandas as pd
import pytest

from tests.helpers import make_duo_logits, write_set
from utils.files.prediction_io import PredictionSet, Split
from utils.report.shift import corruption_errors, severity_curve

SPLITS = ("c_contrast_1", "c_contrast_3", "c_gaussian_noise_1", "c_gaussian_noise_3")


def with_corruptions(pset: PredictionSet, seed: int) -> PredictionSet:
    """The test split again under made-up corruptions: the logits shrunk and noised, more at higher severity."""
    rng = np.random.default_rng(seed)
    test = pset.splits["test"]
    for split in SPLITS:
        severity = int(split[-1])
        logits = test.logits * (1 - 0.2 * severity) + rng.normal(0, 0.5 * severity, test.logits.shape)
        pset.splits[split] = Split(logits.astype(np.float32), test.labels, test.ids)
    return pset


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    import importlib
    import io
    from contextlib import redirect_stderr, redirect_stdout
    root = tmp_path_factory.mktemp("shift")
    sets = make_duo_logits(sizes={"val": 300, "test": 240, "ood_test": 200})
    for i, pset in enumerate(sets.values()):
        write_set(with_corruptions(pset, i), root / "preds")
    (root / "duos.csv").write_text("model_large,model_small,gflops_large,gflops_small\nlarge,small,4.0,0.5\n")

    def run(script, *args):
        module = importlib.import_module(script[:-3].replace("/", "."))
        with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()) as err:
            code = module.main([str(a) for a in args])
        assert code == 0, err.getvalue()
    common = ["--predictions_dir", root / "preds", "--output_dir", root / "res"]
    run("evaluate/2_temp_scale.py", "--predictions_dir", root / "preds", "--output_dir", root / "cal")
    run("evaluate/3_duo_temp_scale.py", "--config", root / "duos.csv", "--predictions_dir", root / "preds",
        "--output_dir", root / "cal")
    run("evaluate/4_evaluate_predictions.py", *common, "--calibrated_dir", root / "cal", "--config", root / "duos.csv")
    run("evaluate/5_evaluate_duo_predictions.py", *common, "--calibrated_dir", root / "cal", "--config",
        root / "duos.csv", "--bootstrap", 100)
    run("evaluate/7_evaluate_cascades.py", *common, "--calibrated_dir", root / "cal", "--config", root / "duos.csv")
    run("evaluate/9_make_report.py", "--results_dir", root / "res", "--calibrated_dir", root / "cal",
        "--predictions_dir", root / "preds", "--large", "large")
    return root / "res"


@pytest.mark.parametrize("table", ["single_model", "duo", "duo_delta", "cascade", "shift_detection",
                                   "duo_shift_detection", "duo_shift_detection_delta"])
def test_corruption_splits_round_trip_through_every_stage(evaluated, table):
    frame = pd.read_csv(evaluated / f"evaluation_{table}_synthetic_corrupt.csv")
    assert set(frame["split"]) == set(SPLITS)
    assert not (evaluated / f"evaluation_{table}_synthetic.csv").exists() or \
        set(pd.read_csv(evaluated / f"evaluation_{table}_synthetic.csv")["split"]) == {"test"}


def test_the_report_has_the_shift_sections(evaluated):
    report = (evaluated / "REPORT.md").read_text()
    for heading in ("Under corruption: the duo's gain against severity (beyond the paper): large",
                    "Corruption errors, relative to the TS large model (mCE-style): large", "Shift detection: large"):
        assert f"## {heading}" in report, heading
    assert (evaluated / "synthetic_severity_large.png").is_file()
    assert "c_contrast_1" not in report.split("## Shift detection")[0].split("## Under corruption")[0]   # kept apart


def test_severity_curve_equals_a_hand_computation():
    rows = []
    for split, delta, low, high, significant in (("c_contrast_1", 0.10, 0.02, 0.2, True),
                                                  ("c_gaussian_noise_1", -0.30, -0.5, -0.1, True),
                                                  ("c_contrast_3", 0.40, -0.1, 0.9, False),
                                                  ("ood_test", 9.0, 9.0, 9.0, True)):         # not a corruption
        rows.append({"model_large": "L", "model_small": "s", "mode": "asymmetric", "uncertainty_type":
                     "softmax_response", "metric": "NLL", "split": split, "delta": delta, "ci_low": low,
                     "ci_high": high, "significant": significant})
    rows.append({**rows[0], "mode": "uqonly", "delta": 5.0})                                   # another mode
    curve = severity_curve(pd.DataFrame(rows), "L", "s", "NLL")
    assert curve["severity"].tolist() == [1, 3]
    assert curve["delta"].tolist() == pytest.approx([(0.10 - 0.30) / 2, 0.40])
    assert curve["ci_low"].tolist() == pytest.approx([(0.02 - 0.5) / 2, -0.1])
    assert curve["ci_high"].tolist() == pytest.approx([(0.2 - 0.1) / 2, 0.9])
    assert curve["corruptions"].tolist() == [2, 1] and curve["significant"].tolist() == [2, 0]
    as_read = pd.DataFrame(rows).astype({"significant": str})           # read_results keeps the cell as text
    assert severity_curve(as_read, "L", "s", "NLL")["significant"].tolist() == [2, 0]


def test_corruption_errors_by_hand():
    single = pd.DataFrame({"model": "L", "wrapper": "TempScaleWrapper", "uncertainty_type": "softmax_response",
                           "split": ["c_defocus_blur_1", "c_defocus_blur_2", "c_shot_noise_1"], "Acc": [0.9, 0.7, 0.8]})
    duos = pd.DataFrame({"model_large": "L", "model_small": "s", "mode": "asymmetric",
                         "uncertainty_type": "softmax_response",
                         "split": ["c_defocus_blur_1", "c_defocus_blur_2", "c_shot_noise_1"],
                         "Acc": [0.95, 0.75, 0.7]})
    found = corruption_errors(single, duos, "L").set_index("option")
    assert found.loc["duo L + s", "defocus_blur"] == pytest.approx(round(100 * (0.05 + 0.25) / (0.1 + 0.3), 1))
    assert found.loc["duo L + s", "shot_noise"] == pytest.approx(150.0)
    assert found.loc["TS L", "mCE"] == 100.0
