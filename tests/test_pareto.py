"""The Pareto front (utils/report/pareto) and the report's cascade and Pareto sections, on results with known
costs (tests/test_report.py's) plus a cascade file."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.test_report import DATASET, metrics, write_results
from utils.files import results as results_schema
from utils.report import pareto


def dominates(a, b, higher_better):
    better = (a[1] > b[1]) if higher_better else (a[1] < b[1])
    no_worse = (a[1] >= b[1]) if higher_better else (a[1] <= b[1])
    return a[0] <= b[0] and no_worse and (a[0] < b[0] or better)


@pytest.mark.parametrize("higher_better", [True, False])
def test_the_front_is_exactly_the_non_dominated_points(higher_better):
    rng = np.random.default_rng(7)
    for _ in range(20):
        cost = rng.integers(1, 8, 40).astype(float)           # many ties in cost and in value
        value = rng.integers(0, 6, 40).astype(float)
        value[rng.integers(0, 40)] = np.nan                     # an undefined metric is never on the front
        on_front = pareto.pareto_front(cost, value, higher_better)
        points = list(zip(cost, value))
        for i, point in enumerate(points):
            beaten = any(dominates(other, point, higher_better) for j, other in enumerate(points)
                         if j != i and np.isfinite(other[1]))
            assert on_front[i] == (np.isfinite(point[1]) and not beaten), (i, point)
    # by hand: (1, 0.5) (2, 0.7) (3, 0.6) (3, 0.9) (4, 0.9): the last is as good as (3, 0.9) but costs more
    mask = pareto.pareto_front([1, 2, 3, 3, 4], [0.5, 0.7, 0.6, 0.9, 0.9], higher_better=True)
    assert mask.tolist() == [True, True, False, True, False]


@pytest.fixture(scope="module")
def results_with_cascades(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pareto") / "results"
    write_results(folder)
    rows = []
    for split, shift in (("test", 0.0), ("ood_test", 0.1)):
        # ResNet50 -> EfficientNet_B0 (4.0 + 0.4 GFLOPs): a sweep and one val-fitted budget
        for target, deferred, acc in ((0.0, 0.0, 0.80), (0.5, 0.5, 0.83), (1.0, 1.0, 0.81)):
            rows.append({**metrics(acc - shift), "model_large": "ResNet50", "model_small": "EfficientNet_B0",
                         "order": "large_first", "uncertainty_type": "softmax_response", "selection": "sweep",
                         "target": target, "tau": 0.5, "deferred": deferred, "gflops_large": 4.0, "gflops_small": 0.4,
                         "gflops_expected": 4.0 + 0.4 * deferred, "split": split})
        rows.append({**rows[-2], "selection": "val_budget", "target": 1.05, "deferred": 0.45,
                     "gflops_expected": 4.18, "Acc": 0.825 - shift})
    frame = pd.DataFrame(rows)
    for split, suffix in (("test", ""), ("ood_test", "_ood")):
        frame[frame["split"] == split].to_csv(folder / f"evaluation_cascade_{DATASET}{suffix}.csv", index=False)
    return folder


def test_candidates_cost_every_option(results_with_cascades):
    folder = results_with_cascades
    read = {table: results_schema.read_results(folder, table) for table in ("single_model", "duo", "deep_ensemble", "cascade")}
    points = pareto.candidates(read["single_model"], read["duo"], read["deep_ensemble"], read["cascade"], "test")
    cost = dict(zip(points["label"], points["gflops"]))
    family = dict(zip(points["label"], points["family"]))
    assert cost["ResNet50_ivon_mc4_r0"] == 16.0 and family["ResNet50_ivon_mc4_r0"] == "IVON"   # 4 samples x 4.0
    assert cost["ConvNeXt_Base_LA"] == 16.0 and family["ConvNeXt_Base_LA"] == "Laplace"
    assert cost["ResNet50_greedy (TS)"] == 4.0 and family["ResNet50_greedy (TS)"] == "soup (TS)"
    assert cost["DE(2) ResNet50"] == 8.0 and cost["DE(3) ResNet50"] == 12.0
    # DE(2) is the mean over its three subsets (0.81, 0.82, 0.83), never stage 8's summary rows
    assert points.loc[points["label"] == "DE(2) ResNet50", "Acc"].item() == pytest.approx(0.82)
    assert cost["ResNet50 + EfficientNet_B0"] == pytest.approx(4.4)
    # only the sweep's inner points: its ends are the TS large model and the duo, shown as themselves
    cascades = points[points["family"] == "cascade (large first)"]
    assert cascades["label"].tolist() == ["ResNet50 → EfficientNet_B0 (50% deferred)"]
    assert cascades["gflops"].item() == pytest.approx(4.2)
    # the raw IVON/LA rows only (the paper reports them raw); every single model raw and temperature-scaled
    assert "ResNet50_LA (TS)" not in cost and "ResNet50 (TS)" in cost and "ResNet50" in cost


def test_report_draws_and_tables_the_front_and_the_cascades(results_with_cascades, stage):
    folder = results_with_cascades
    code, _, err = stage("evaluate/9_make_report.py", "--results_dir", folder)
    assert code == 0, err
    report = (folder / "REPORT.md").read_text()
    assert "## Which option at which compute? (Pareto front, beyond the paper)" in report
    assert "## Cascades at val-fitted budgets (beyond the paper)" in report
    assert "| cascade large first | 1.05× | 45.0 | 4.18 | 82.50 |" in report
    with Image.open(folder / f"{DATASET}_pareto.png") as image:
        assert image.size[0] > 1000 and image.size[1] > 500
    # the Acc front on test by hand: MNASNet0_75 (0.2 GFLOPs, 65%) is the cheapest; the soup's duo (4.4, 91%) is
    # the best, so nothing costlier is on the front
    front_line = next(line for line in report.splitlines() if line.startswith("| Acc |"))
    steps = [step.strip() for step in front_line.split("|")[4].split(" → ")]
    assert steps[0].startswith("MNASNet0_75") and "(0.2: 65.00)" in steps[0]
    assert steps[-1] == "ResNet50_greedy + EfficientNet_B0 (4.4: 91.00)"
