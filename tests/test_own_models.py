"""Your own models, no traps: prediction kinds (logits, log_probs, probs) at every reader, one source for a model's
cost, errors that show their evidence, the numpy API (utils/api.py) equal to the stages, and the worked example."""
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy.special import log_softmax, softmax

from tests.conftest import REPO
from tests.helpers import make_duo_logits, write_official, write_set
from utils.errors import UserError
from utils.files.prediction_io import PredictionSet, Split, read_predictions

S2, S3, S4, S5, S7, S8, S9 = ("evaluate/2_temp_scale.py", "evaluate/3_duo_temp_scale.py",
                              "evaluate/4_evaluate_predictions.py", "evaluate/5_evaluate_duo_predictions.py",
                              "evaluate/7_evaluate_cascades.py", "evaluate/8_evaluate_deep_ensemble.py",
                              "evaluate/9_make_report.py")


def as_kind(pset: PredictionSet, kind: str) -> PredictionSet:
    """The same model's predictions stored as `kind` (float32, as files store them)."""
    convert = {"logits": lambda x: x, "log_probs": lambda x: log_softmax(x.astype(np.float64), axis=1),
               "probs": lambda x: softmax(x.astype(np.float64), axis=1)}[kind]
    splits = {name: Split(convert(s.logits).astype(np.float32), s.labels, s.ids) for name, s in pset.splits.items()}
    return PredictionSet(pset.model, splits, {**pset.meta, "kind": kind})


# ----------------------------------------------------------------------------- kinds

@pytest.mark.parametrize("layout", ["npz", "csv", "official"])
def test_probabilities_declared_as_logits_are_refused_by_every_reader(tmp_path, stage, layout):
    probs = as_kind(make_duo_logits()["large"], "probs")
    undeclared = PredictionSet("large", probs.splits, {"dataset": "synthetic"})      # kind: logits (the default)
    if layout == "official":
        path = write_official(undeclared, tmp_path / "y-prediction" / "synthetic") / "val" / "raw" / "large.csv"
    else:
        path = write_set(undeclared, tmp_path / "p", f".{layout}")
    with pytest.raises(UserError, match=r"holds probabilities \(every entry in \[0, 1\], every row summing to 1 within "
                                        r"0\.1\), but they are declared as logits.*\"kind\": \"probs\" in an NPZ's meta, "
                                        r"a `kind` column"):
        read_predictions(path)
    code, _, err = stage(S2, "--predictions", path, "--output_dir", tmp_path / "cal")
    assert code == 2 and "declared as logits" in err and not (tmp_path / "cal").exists()


@pytest.mark.parametrize("layout", ["npz", "csv", "official"])
def test_a_declared_kind_is_read_in_every_layout(tmp_path, layout):
    pset = make_duo_logits()["large"]
    probs = as_kind(pset, "probs")
    if layout == "official":
        root = write_official(probs, tmp_path / "y-prediction" / "synthetic")
        for split in probs.splits:                      # the official raw CSVs declare their kind in a column too
            raw = root / split / "raw" / "large.csv"
            pd.read_csv(raw).assign(kind="probs").to_csv(raw, index=False)
        path = root / "val" / "raw" / "large.csv"
    else:
        path = write_set(probs, tmp_path / "p", f".{layout}")
    read = read_predictions(path)
    assert read.meta["kind"] == "log_probs" and read.meta["stored_kind"] == "probs"
    expected = log_softmax(pset.splits["test"].logits.astype(np.float64), axis=1)
    assert np.allclose(read.splits["test"].logits, expected, atol=1e-5)


def test_a_declared_kind_must_hold(tmp_path):
    pset = make_duo_logits()["large"]
    not_probs = PredictionSet("large", pset.splits, {"kind": "probs"})
    with pytest.raises(UserError, match="declared kind 'probs' but row"):
        read_predictions(write_set(not_probs, tmp_path / "a"))
    not_log_probs = PredictionSet("large", pset.splits, {"kind": "log_probs"})
    with pytest.raises(UserError, match="declared kind 'log_probs' but row"):
        read_predictions(write_set(not_log_probs, tmp_path / "b"))
    with pytest.raises(UserError, match="kind 'scores' is not one of logits, log_probs, probs"):
        read_predictions(write_set(PredictionSet("large", pset.splits, {"kind": "scores"}), tmp_path / "c"))
    # a zero probability becomes log(PROBABILITY_FLOOR), a finite number
    from utils.files.prediction_io import PROBABILITY_FLOOR
    probs = as_kind(pset, "probs")
    probs.splits["val"].logits[0] = np.eye(probs.num_classes, dtype=np.float32)[0]
    read = read_predictions(write_set(probs, tmp_path / "d"))
    assert read.splits["val"].logits[0, 1] == pytest.approx(np.log(PROBABILITY_FLOOR), rel=1e-6)


def run_every_stage(stage, root, preds):
    duos = root / "duos.csv"
    cal, out = root / f"cal_{preds.name}", root / f"res_{preds.name}"
    common = ["--predictions_dir", preds, "--calibrated_dir", cal, "--output_dir", out]
    for script, args in ((S2, ["--predictions_dir", preds, "--output_dir", cal]),
                         (S3, ["--config", duos, "--predictions_dir", preds, "--output_dir", cal]),
                         (S4, [*common, "--config", duos, "--bootstrap", "100"]),
                         (S5, ["--config", duos, *common, "--bootstrap", "100"]),
                         (S5, ["--config", duos, *common, "--combine", "probs"]),
                         (S7, ["--config", duos, *common, "--budgets", "1.05"]),
                         (S8, ["--members", preds / "large.npz", preds / "large_greedy.npz", "--sizes", "2", "--name",
                               "large", "--output_dir", out, "--bootstrap", "100", "--base", "large",
                               "--predictions_dir", preds])):
        code, _, err = stage(script, *args)
        assert code == 0, (script, err)
    return cal, out


def test_one_model_as_logits_log_probs_or_probs_gives_the_same_results(tmp_path, stage):
    sets = make_duo_logits(num_classes=5, seed=4, models=("large", "large_greedy", "small"), quality=(2.5, 2.4, 1.2),
                           scale=(3.0, 3.0, 1.5))
    (tmp_path / "duos.csv").write_text("model_large,model_small,gflops_large,gflops_small\nlarge,small,4,1\n")
    found = {}
    for kind in ("logits", "log_probs", "probs"):
        for pset in sets.values():
            write_set(as_kind(pset, kind), tmp_path / kind)
        cal, out = run_every_stage(stage, tmp_path, tmp_path / kind)
        found[kind] = {path.name: pd.read_csv(path) for path in sorted(out.glob("*.csv"))} | {
            path.name: pd.read_csv(path) for path in sorted(cal.glob("*.csv"))}
    for kind in ("log_probs", "probs"):
        assert found[kind].keys() == found["logits"].keys()
        for name, frame in found["logits"].items():
            other = found[kind][name]
            numbers = [c for c in frame.columns if frame[c].dtype.kind == "f" and not c.startswith(("digest", "nll_",
                                                                                                     "val_nll"))]
            assert np.allclose(other[numbers].to_numpy(float), frame[numbers].to_numpy(float), rtol=2e-5, atol=2e-6,
                               equal_nan=True), (kind, name)
            text = [c for c in frame.columns if frame[c].dtype.kind == "O" and "digest" not in c]
            assert other[text].equals(frame[text]), (kind, name)


# ----------------------------------------------------------------------------- costs

def test_costs_of_your_own_models_reach_every_stage_and_the_report(tmp_path, stage):
    # neither model is in configs/backbones.csv: the duos CSV gives their costs
    for pset in make_duo_logits(num_classes=5, models=("my_large", "my_small")).values():
        write_set(pset, tmp_path / "predictions")
    duos = tmp_path / "duos.csv"
    duos.write_text("model_large,model_small,gflops_large,gflops_small\nmy_large,my_small,2.0,0.1\n")
    preds, cal, out = tmp_path / "predictions", tmp_path / "cal", tmp_path / "results"
    common = ["--predictions_dir", preds, "--calibrated_dir", cal, "--output_dir", out, "--fit_missing"]
    for script, args in ((S4, [*common, "--config", duos]), (S5, ["--config", duos, *common]),
                         (S7, ["--config", duos, *common, "--budgets", "1.02"])):
        assert stage(script, *args)[0] == 0
    single = pd.read_csv(out / "evaluation_single_model_synthetic.csv")
    assert dict(zip(single.model, single.gflops)) == {"my_large": 2.0, "my_small": 0.1}
    code, _, err = stage(S9, "--results_dir", out, "--calibrated_dir", cal)
    assert code == 0, err
    report = (out / "REPORT.md").read_text()
    assert (out / "synthetic_fig2_single_models.png").is_file() and "without a known cost" not in report
    front = report.split("**Front, in-distribution (test)**", 1)[1]
    assert "my_small (TS)" in front or "my_small (raw)" in front        # the cheapest option is on the front
    # stage 4 without the duos CSV has no cost for them: the report takes the duo rows' (one cost per model)
    assert stage(S4, *common)[0] == 0
    assert stage(S9, "--results_dir", out, "--calibrated_dir", cal)[0] == 0
    assert (out / "synthetic_fig2_single_models.png").is_file()
    # two costs for one model are refused, naming where the stages take costs from
    assert stage(S4, *common, "--config", duos)[0] == 0
    duos.write_text("model_large,model_small,gflops_large,gflops_small\nmy_large,my_small,3.0,0.1\n")
    assert stage(S5, "--config", duos, *common)[0] == 0
    code, _, err = stage(S9, "--results_dir", out, "--calibrated_dir", cal)
    assert code == 2 and "different GFLOPs of my_large (2 vs 3)" in err and "give stages 4, 5 and 7 the same" in err


def test_stage1s_measured_cost_is_used_when_no_csv_gives_one(tmp_path, stage):
    sets = make_duo_logits(num_classes=5, models=("net_a", "net_b"))
    for pset, gflops in zip(sets.values(), (1.5, 0.3)):
        pset.meta.update(gflops=gflops, image_size=32)
        write_set(pset, tmp_path / "predictions")
    (tmp_path / "duos.csv").write_text("model_large,model_small\nnet_a,net_b\n")
    common = ["--predictions_dir", tmp_path / "predictions", "--calibrated_dir", tmp_path / "cal", "--output_dir",
              tmp_path / "res", "--fit_missing"]
    assert stage(S4, *common)[0] == 0 and stage(S5, "--config", tmp_path / "duos.csv", *common)[0] == 0
    assert set(pd.read_csv(tmp_path / "res" / "evaluation_single_model_synthetic.csv").gflops) == {1.5, 0.3}
    duo = pd.read_csv(tmp_path / "res" / "evaluation_duo_synthetic.csv")
    assert np.allclose(duo.gflops_balance, 0.2)


def test_a_budget_at_or_above_the_whole_duos_cost_is_warned_about(tmp_path, stage):
    for pset in make_duo_logits(num_classes=5).values():
        write_set(pset, tmp_path / "predictions")
    (tmp_path / "duos.csv").write_text("model_large,model_small,gflops_large,gflops_small\nlarge,small,1,0.004\n")
    code, _, err = stage(S7, "--config", tmp_path / "duos.csv", "--predictions_dir", tmp_path / "predictions",
                         "--calibrated_dir", tmp_path / "cal", "--output_dir", tmp_path / "res", "--fit_missing",
                         "--budgets", "1.1", "1.002", "--orders", "large_first")
    assert code == 0 and "--budgets 1.1" in err and "at or above the whole duo's cost (1.004x" in err
    assert "for large_first budgets between 1 and 1.004 make sense" in err and "--budgets 1.002" not in err


# ----------------------------------------------------------------------------- the numpy API

def test_the_numpy_api_equals_the_stages(tmp_path, stage):
    from utils.api import fit_duo
    sets = make_duo_logits(num_classes=6, seed=8)
    for pset in sets.values():
        write_set(pset, tmp_path / "predictions")
    (tmp_path / "duos.csv").write_text("model_large,model_small\nlarge,small\n")
    preds, cal, out = tmp_path / "predictions", tmp_path / "cal", tmp_path / "res"
    common = ["--predictions_dir", preds, "--calibrated_dir", cal, "--output_dir", out]
    for script, args in ((S2, ["--predictions_dir", preds, "--output_dir", cal]),
                         (S3, ["--config", tmp_path / "duos.csv", "--predictions_dir", preds, "--output_dir", cal]),
                         (S4, common), (S5, ["--config", tmp_path / "duos.csv", *common, "--bootstrap", "200"])):
        assert stage(script, *args)[0] == 0
    large, small = sets["large"].splits, sets["small"].splits
    duo = fit_duo(large["val"].logits, small["val"].logits, large["val"].labels)
    weights = pd.read_csv(cal / "temperature_duo.csv").iloc[0]
    temperatures = pd.read_csv(cal / "temperature_single_model.csv").set_index("full_name").temperature
    assert duo.temperatures.weight_large == weights.weight_large and duo.temperatures.weight_small == weights.weight_small
    assert duo.temperatures.single_large == temperatures["large"]
    results = duo.evaluate(large["test"].logits, small["test"].logits, large["test"].labels)
    stage5 = pd.read_csv(out / "evaluation_duo_synthetic.csv")
    stage4 = pd.read_csv(out / "evaluation_single_model_synthetic.csv")
    metrics = [c for c in stage5.columns if c in results.columns and stage5[c].dtype.kind == "f"]
    mine = results[results.model == "duo"].set_index(["mode", "uncertainty_type"])[metrics]
    theirs = stage5.set_index(["mode", "uncertainty_type"])[metrics].loc[mine.index]
    assert np.nanmax(np.abs(mine.to_numpy() - theirs.to_numpy())) < 1e-12
    ts = stage4[(stage4.model == "large") & (stage4.wrapper == "TempScaleWrapper")].set_index("uncertainty_type")[metrics]
    api_ts = results[results.model == "large"].set_index("uncertainty_type")[metrics].loc[ts.index]
    assert np.nanmax(np.abs(api_ts.to_numpy() - ts.to_numpy())) < 1e-12
    gains = duo.compare(large["test"].logits, small["test"].logits, large["test"].labels, resamples=200)
    deltas = pd.read_csv(out / "evaluation_duo_delta_synthetic.csv").set_index(["mode", "uncertainty_type", "metric"])
    gains = gains.set_index(["mode", "uncertainty_type", "metric"])
    for column in ("delta", "ci_low", "ci_high"):
        difference = gains[column].to_numpy() - deltas.loc[gains.index, column].to_numpy()
        assert np.nanmax(np.abs(difference)) < 1e-12, column
    out_probs = duo.predict(large["test"].logits, small["test"].logits)
    assert out_probs["probs"].shape == large["test"].logits.shape and np.allclose(out_probs["probs"].sum(1), 1)
    # by id, as files are paired: the sidekick's rows in another order give the same duo
    order = np.random.default_rng(0).permutation(len(small["val"]))
    again = fit_duo(large["val"].logits, small["val"].logits[order], large["val"].labels,
                    val_ids=(large["val"].ids, small["val"].ids[order]))
    assert again.temperatures == duo.temperatures


def test_the_numpy_api_checks_its_arrays_as_the_files_are_checked():
    from utils.api import fit_duo
    sets = make_duo_logits(num_classes=4)
    large, small = sets["large"].splits["val"], sets["small"].splits["val"]
    with pytest.raises(UserError, match="declared as logits"):
        fit_duo(softmax(large.logits, axis=1), softmax(small.logits, axis=1), large.labels)
    with pytest.raises(UserError, match="labels outside"):
        fit_duo(large.logits, small.logits, large.labels + 4)
    with pytest.raises(UserError, match="NaN or inf"):
        fit_duo(np.where(np.eye(len(large.labels), 4, dtype=bool), np.nan, large.logits), small.logits, large.labels)
    with pytest.raises(UserError, match="every 'val' sample correctly"):
        fit_duo(np.eye(4)[large.labels] * 5, small.logits, large.labels)
    from_probs = fit_duo(softmax(large.logits, axis=1), softmax(small.logits, axis=1), large.labels, kind="probs")
    from_logits = fit_duo(large.logits, small.logits, large.labels)
    assert np.allclose(list(vars(from_probs.temperatures).values()), list(vars(from_logits.temperatures).values()),
                       rtol=1e-5)


# ----------------------------------------------------------------------------- figures

def test_figures_3_to_6_draw_the_papers_method_on_top(monkeypatch):
    from utils.report import figures
    captured = {}
    monkeypatch.setattr(figures, "save_figure", lambda fig, path, dpi: captured.setdefault("fig", fig))
    rows = pd.DataFrame({"split": ["test"] * 2, "gflops_balance": [0.1, 0.2], **{m: [0.5, 0.6] for m in
                                                                                 figures.FIGURE_METRICS}})
    series = {figures.MODE_STYLE[mode][1]: rows for mode in ("asymmetric", "uqonly", "asymmetric_code")}
    figures.metric_vs_balance_figure(series, {}, "unused.png", "title")
    for ax in captured["fig"].axes:
        lines = [line for line in ax.get_lines() if line.get_label().startswith("Duo")]
        if lines:
            assert lines[-1].get_label() == figures.OURS
            assert lines[-1].get_zorder() > max(line.get_zorder() for line in lines[:-1])


# ----------------------------------------------------------------------------- the worked example

@pytest.mark.slow
def test_the_worked_example_on_scikit_learns_digits(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "examples" / "digits_own_models.py"), "--output_dir",
                             tmp_path / "digits"], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    nll = re.search(r"ood_test: duo - TS mlp, NLL ([-+0-9.]+) \[([-+0-9.]+), ([-+0-9.]+)\]", result.stdout)
    deltas = pd.read_csv(tmp_path / "digits" / "results" / "evaluation_duo_delta_digits_ood.csv")
    row = deltas[(deltas["mode"] == "asymmetric") & (deltas.uncertainty_type == "softmax_response")
                 & (deltas.metric == "NLL")].iloc[0]
    assert [float(v) for v in nll.groups()] == pytest.approx([row.delta, row.ci_low, row.ci_high], abs=1e-4)
    report = (tmp_path / "digits" / "results" / "REPORT.md").read_text()
    assert "mlp + logreg_pooled [asymmetric]" in report and (tmp_path / "digits" / "results" / "digits_pareto.png").is_file()


def test_rounded_probabilities_and_percentages_are_never_logits(tmp_path):
    probs = as_kind(make_duo_logits(num_classes=3)["large"], "probs")
    for name, transform, expected in (("rounded", lambda p: np.round(p, 2), "holds probabilities"),
                                      ("drifted", lambda p: p * 1.002, "holds probabilities"),
                                      ("percent", lambda p: np.round(100 * p, 1), "holds percentages")):
        splits = {k: Split(transform(v.logits).astype(np.float32), v.labels, v.ids) for k, v in probs.splits.items()}
        with pytest.raises(UserError, match=expected):
            read_predictions(write_set(PredictionSet("large", splits, {}), tmp_path / name))
        declared = PredictionSet("large", splits, {"kind": "probs"})
        if name == "percent":
            with pytest.raises(UserError, match=r"percentages\? divide them by 100"):
                read_predictions(write_set(declared, tmp_path / f"{name}_declared"))
        else:                     # declared, a rounded or drifted probability vector is read (softmax renormalises)
            assert read_predictions(write_set(declared, tmp_path / f"{name}_declared")).meta["stored_kind"] == "probs"


def test_the_numpy_api_needs_labels_to_evaluate():
    from utils.api import fit_duo
    sets = make_duo_logits(num_classes=4)
    large, small = sets["large"].splits, sets["small"].splits
    duo = fit_duo(large["val"].logits, small["val"].logits, large["val"].labels)
    with pytest.raises(UserError, match="labels: evaluating needs the true labels"):
        duo.evaluate(large["test"].logits, small["test"].logits, None)
    with pytest.raises(UserError, match="a pair \\(ids_large, ids_small\\), not 3 arrays"):
        duo.evaluate(large["test"].logits, small["test"].logits, large["test"].labels, ids=(1, 2, 3))
    one_mode = duo.evaluate(large["test"].logits, small["test"].logits, large["test"].labels, modes="asymmetric")
    assert set(one_mode["mode"].dropna()) == {"asymmetric"}
    order = np.random.default_rng(1).permutation(len(small["test"]))
    shuffled = duo.predict(large["test"].logits, small["test"].logits[order], ids=(large["test"].ids, small["test"].ids[order]))
    assert np.allclose(shuffled["probs"], duo.predict(large["test"].logits, small["test"].logits)["probs"])
