"""Stage 7 (cascades) and utils/maths/cascades: the endpoints are the duo and the first model, cost grows with
deferral, thresholds fitted on val meet their budget."""
import math

import numpy as np
import pandas as pd
import pytest

from tests.helpers import make_duo_logits, write_set
from utils.maths import bootstrap, cascades
from utils.maths import uncertainty_metrics as um
from utils.maths.duo_modes import DuoTemperatures, duo_outputs

S2, S3, S4, S5, S7 = ("evaluate/2_temp_scale.py", "evaluate/3_duo_temp_scale.py", "evaluate/4_evaluate_predictions.py",
                      "evaluate/5_evaluate_duo_predictions.py", "evaluate/7_evaluate_cascades.py")
LARGE, SMALL = "convnext_base", "efficientnet_b0"


def terms_of(logits, labels, temperature=1.0):
    scaled = um.WeightedLogits([logits], [1.0 / temperature])
    return bootstrap.sample_terms(scaled, labels)


def test_endpoints_monotone_cost_and_mixing():
    sets = make_duo_logits(num_classes=5, seed=4, quality=(2.5, 1.5), scale=(2.0, 1.0))
    large, small = sets["large"].splits["test"], sets["small"].splits["test"]
    temps = DuoTemperatures(1.3, 0.9, 0.4, 0.2)
    out = duo_outputs(large.logits, small.logits, temps, ["asymmetric"], ["softmax_response"])["asymmetric"]
    duo = bootstrap.sample_terms(out.logits, large.labels, out.predictions, out.uncertainty["softmax_response"],
                                 out.stats)
    first = terms_of(large.logits, large.labels, 1.3)
    at_minus_inf, everything = cascades.cascade_point(first, duo, -math.inf)
    at_plus_inf, nothing = cascades.cascade_point(first, duo, math.inf)
    assert (everything, nothing) == (1.0, 0.0)
    expected_duo = um.compute_metrics(out.logits, large.labels, out.predictions, out.uncertainty["softmax_response"])
    expected_large = um.compute_metrics(um.WeightedLogits([large.logits], [1 / 1.3]), large.labels)
    for column in um.METRIC_COLUMNS:
        assert at_minus_inf[column] == pytest.approx(expected_duo[column], abs=1e-12), column
        assert at_plus_inf[column] == pytest.approx(expected_large[column], abs=1e-12), column
    # deferral and expected cost grow as tau falls; the sweep's fractions are met (no ties in float uncertainty)
    points = cascades.sweep_thresholds(first.uncertainty, 10)
    assert points[0] == (0.0, math.inf) and points[-1] == (1.0, -math.inf)
    fractions = [cascades.cascade_point(first, duo, tau)[1] for _, tau in points]
    assert fractions == pytest.approx([target for target, _ in points], abs=1 / len(large.labels))
    costs = [cascades.expected_gflops("large_first", 15.4, 0.4, f) for f in fractions]
    assert all(b >= a for a, b in zip(costs, costs[1:])) and costs[0] == 15.4 and costs[-1] == pytest.approx(15.8)
    assert cascades.expected_gflops("small_first", 15.4, 0.4, 0.5) == pytest.approx(0.4 + 7.7)
    # a middle point: every sample answered by the right predictor
    tau = points[5][1]
    mixed, _ = cascades.cascade_point(first, duo, tau)
    deferred = first.uncertainty > tau
    predictions = np.where(deferred, out.predictions, first.predictions)
    assert mixed["Acc"] == pytest.approx(np.mean(predictions == large.labels))
    assert mixed["NLL"] == pytest.approx(np.mean(np.where(deferred, duo.nll, first.nll)))


def test_budget_fraction_and_threshold():
    assert cascades.budget_fraction(1.1, 10.0, 10.0, 2.0) == pytest.approx(0.5)
    assert cascades.budget_fraction(0.9, 10.0, 10.0, 2.0) == 0.0          # below the first model's own cost
    assert cascades.budget_fraction(5.0, 10.0, 10.0, 2.0) == 1.0
    assert cascades.budget_fraction(0.5, 10.0, 2.0, 10.0) == pytest.approx(0.3)   # small first
    u = np.arange(10.0)
    assert (u > cascades.threshold_for_fraction(u, 0.3)).sum() == 3
    assert cascades.threshold_for_fraction(u, 0.0) == math.inf and cascades.threshold_for_fraction(u, 1.0) == -math.inf


@pytest.fixture
def workdir(tmp_path, stage):
    sets = make_duo_logits(num_classes=6, models=(LARGE, SMALL), quality=(2.5, 1.6), scale=(2.5, 1.0))
    for pset in sets.values():
        write_set(pset, tmp_path / "predictions")
    pd.DataFrame({"model_large": [LARGE], "model_small": [SMALL], "gflops_large": [15.36],
                  "gflops_small": [0.39]}).to_csv(tmp_path / "duos.csv", index=False)
    folders = ["--predictions_dir", tmp_path / "predictions"]
    assert stage(S2, *folders, "--output_dir", tmp_path / "calibrated")[0] == 0
    assert stage(S3, "--config", tmp_path / "duos.csv", *folders, "--output_dir", tmp_path / "calibrated")[0] == 0
    return tmp_path, folders + ["--calibrated_dir", tmp_path / "calibrated", "--output_dir", tmp_path / "results"]


def test_stage7_endpoints_equal_stages_4_and_5(workdir, stage):
    root, folders = workdir
    for script in (S4, S5):
        code, _, err = stage(script, *folders, *(["--config", root / "duos.csv"] if script == S5 else []))
        assert code == 0, err
    code, out, err = stage(S7, "--config", root / "duos.csv", *folders, "--steps", 8, "--budgets", 1.01, 1.02,
                           "--uncertainty_types", "softmax_response", "entropy")
    assert code == 0, err
    assert "wrote" in out
    for suffix in ("", "_ood"):
        cascade = pd.read_csv(root / "results" / f"evaluation_cascade_synthetic{suffix}.csv")
        single = pd.read_csv(root / "results" / f"evaluation_single_model_synthetic{suffix}.csv", keep_default_na=False)
        duo = pd.read_csv(root / "results" / f"evaluation_duo_synthetic{suffix}.csv")
        assert list(cascade.columns[:20]) == list(um.METRIC_COLUMNS)
        for kind in ("softmax_response", "entropy"):
            sweep = cascade[(cascade.selection == "sweep") & (cascade.uncertainty_type == kind)]
            duo_row = duo[(duo["mode"] == "asymmetric") & (duo.uncertainty_type == kind)].iloc[0]
            for order, first in (("large_first", LARGE), ("small_first", SMALL)):
                curve = sweep[sweep.order == order].sort_values("target")
                assert len(curve) == 9 and curve.deferred.is_monotonic_increasing
                assert curve.gflops_expected.is_monotonic_increasing
                ts = single[(single.model == first) & (single.wrapper == "TempScaleWrapper")
                            & (single.uncertainty_type == kind)].iloc[0]
                alone, both = curve.iloc[0], curve.iloc[-1]
                assert alone.tau == math.inf and both.tau == -math.inf
                assert alone.gflops_expected == (15.36 if first == LARGE else 0.39)
                assert both.gflops_expected == pytest.approx(15.36 + 0.39)
                for column in um.METRIC_COLUMNS:
                    assert alone[column] == pytest.approx(ts[column], abs=1e-12), (order, kind, column)
                    assert both[column] == pytest.approx(duo_row[column], abs=1e-12), (order, kind, column)
    # val-fitted budgets: the threshold defers about the budget's share of val, applied unchanged to test (on the
    # shifted split the large model is less sure, so it defers more)
    cascade = pd.read_csv(root / "results" / "evaluation_cascade_synthetic.csv")
    budget = cascade[cascade.selection == "val_budget"]
    assert sorted(set(budget.target)) == [1.01, 1.02] and set(budget.order) == {"large_first", "small_first"}
    large_first = budget[(budget.order == "large_first") & (budget.uncertainty_type == "softmax_response")]
    for _, row in large_first.iterrows():
        share = (row.target * 15.36 - 15.36) / 0.39
        assert abs(row.deferred - share) < 0.12          # a threshold from 300 val samples, read on 400 test ones
    small_first = budget[budget.order == "small_first"]
    assert (small_first.deferred > 0.9).all()            # 1.01 x 15.36 GFLOPs leaves f_large for (almost) every input


def test_stage7_refuses_missing_costs_and_temperatures(workdir, stage):
    root, folders = workdir
    for pset in make_duo_logits(models=("my_large", "my_small")).values():    # not in configs/backbones.csv
        write_set(pset, root / "own")
    pd.DataFrame({"model_large": ["my_large"], "model_small": ["my_small"]}).to_csv(root / "no_cost.csv", index=False)
    code, _, err = stage(S7, "--config", root / "no_cost.csv", "--predictions_dir", root / "own", "--fit_missing",
                         "--calibrated_dir", root / "cal2", "--output_dir", root / "out2")
    assert code != 0 and "no GFLOPs" in err and "gflops_large" in err and not (root / "out2").exists()
    (root / "calibrated" / "temperature_duo.csv").unlink()
    code, _, err = stage(S7, "--config", root / "duos.csv", *folders)
    assert code != 0 and "no duo weights" in err and "3_duo_temp_scale.py" in err
    assert not (root / "results").exists()
    code, _, err = stage(S7, "--config", root / "duos.csv", *folders, "--fit_missing")
    assert code == 0, err
    assert (root / "calibrated" / "temperature_duo.csv").exists()


def test_stage7_reruns_replace_whole_curves_and_budgets_are_checked(workdir, stage):
    root, folders = workdir
    config = ["--config", root / "duos.csv", *folders]
    assert stage(S7, *config, "--steps", 8, "--budgets", 1.02)[0] == 0
    code, out, err = stage(S7, *config, "--steps", 4, "--budgets", 0.5, 0.5)
    assert code == 0, err
    # a budget below the first model's cost defers nothing, and says so; the same budget twice is one budget
    assert "--budgets 0.5" in err and "below the first model's own cost" in err and "defers nothing" in err
    cascade = pd.read_csv(root / "results" / "evaluation_cascade_synthetic.csv")
    groups = cascade.groupby(["order", "uncertainty_type"])
    assert (groups.size() == 5 + 1).all()            # the new sweep (5 points) and budget only: no --steps 8 point
    assert set(cascade.target[cascade.selection == "val_budget"]) == {0.5}
    assert f"wrote {2 * 2 * 6} cascade point(s)" in out          # test and ood_test x two orders x six points
    code, _, err = stage(S7, *config, "--steps", 1001)
    assert code != 0 and "--steps" in err and "1 to 1000" in err
    code, _, err = stage(S7, *config, "--dataset", "probs_x")
    assert code != 0 and "probs_" in err and "--dataset" in err


def test_report_refuses_out_of_range_cascade_rows(workdir, stage, tmp_path):
    root, folders = workdir
    assert stage(S7, "--config", root / "duos.csv", *folders)[0] == 0
    path = root / "results" / "evaluation_cascade_synthetic.csv"
    original = pd.read_csv(path, keep_default_na=False, dtype=str)
    for column, value, message in (("Acc", "7", "outside [0, 1]"), ("order", "middle", "not one of large_first"),
                                   ("deferred", "1.5", "outside [0, 1]")):
        edited = original.copy()
        edited.loc[3, column] = value
        edited.to_csv(path, index=False)
        code, _, err = stage("evaluate/9_make_report.py", "--results_dir", root / "results", "--output",
                             tmp_path / "R.md")
        assert code != 0 and f"data row 4, column {column}" in err and message in err, err
        assert not (tmp_path / "R.md").exists()


def test_a_sidekick_costlier_than_the_large_model_is_warned_about(workdir, stage):
    root, folders = workdir
    pd.DataFrame({"model_large": [LARGE], "model_small": [SMALL], "gflops_large": [0.39],
                  "gflops_small": [15.36]}).to_csv(root / "swapped.csv", index=False)
    code, _, err = stage(S7, "--config", root / "swapped.csv", *folders)
    assert code == 0, err
    assert "sidekick costlier than the large model (FLOPs balance > 1)" in err and f"{LARGE} + {SMALL}" in err
