"""Stages 2-5 and 8 end to end on synthetic prediction files, through their command lines."""
import shutil

import numpy as np
import pandas as pd
import pytest

from tests.conftest import run_cli
from tests.helpers import make_duo_logits, permuted, write_features, write_official, write_set
from utils.maths import calibrate_temperature as ct
from utils.maths import uncertainty_metrics as um
from utils.maths.duo_modes import MODES, DuoTemperatures, duo_outputs

S2, S3, S4, S5, S8 = ("evaluate/2_temp_scale.py", "evaluate/3_duo_temp_scale.py", "evaluate/4_evaluate_predictions.py",
                      "evaluate/5_evaluate_duo_predictions.py", "evaluate/8_evaluate_deep_ensemble.py")
LARGE, SMALL = "convnext_base", "efficientnet_b0"


@pytest.fixture
def workdir(tmp_path):
    """A user's working folder: ./predictions with a large model and a permuted sidekick (CSV), a duos CSV."""
    sets = make_duo_logits(num_classes=6, models=(LARGE, SMALL), quality=(2.5, 1.8), scale=(2.5, 1.0))
    (tmp_path / "predictions").mkdir()
    write_set(sets[LARGE], tmp_path / "predictions", ".csv")
    write_set(permuted(sets[SMALL]), tmp_path / "predictions", ".csv")
    pd.DataFrame({"model_large": [LARGE], "model_small": [SMALL], "gflops_large": [15.36],
                  "gflops_small": [0.39]}).to_csv(tmp_path / "duos.csv", index=False)
    return tmp_path, sets


def test_readme_command_lines(workdir):
    root, sets = workdir
    steps = [
        (S2, "--predictions", f"./predictions/{LARGE}.csv", f"./predictions/{SMALL}.csv", "--output_dir", "./calibrated"),
        (S3, "--large_model_pred", f"./predictions/{LARGE}.csv", "--small_model_pred", f"./predictions/{SMALL}.csv",
         "--output_dir", "./calibrated"),
        (S4, "--predictions_dir", "./predictions", "--output_dir", "./results", "--dataset", "synthetic"),
        (S5, "--config", "duos.csv", "--predictions_dir", "./predictions", "--output_dir", "./results"),
    ]
    for script, *args in steps:
        result = run_cli(script, *args, cwd=root)
        assert result.returncode == 0, result.stderr
    # CSV prediction files carry no metadata: results are named after the predictions folder
    assert "naming the results after the folder 'predictions'" in result.stderr
    single = pd.read_csv(root / "calibrated" / "temperature_single_model.csv")
    assert list(single.columns) == ["full_name", "temperature", "nll_before", "nll_after", "ece_before", "ece_after", "n_val",
                                    "dataset", "digest"]
    assert set(single.full_name) == {LARGE, SMALL} and (single.nll_after <= single.nll_before).all()
    duo_t = pd.read_csv(root / "calibrated" / "temperature_duo.csv")
    assert list(duo_t.columns) == ["model_large", "model_small", "temperature_large", "temperature_small",
                                   "weight_large", "weight_small", "val_nll", "n_val", "dataset", "digest_large",
                                   "digest_small"]
    row = duo_t.iloc[0]
    assert row.temperature_large == pytest.approx(1 / (2 * row.weight_large))

    # the duo results equal a direct computation on id-aligned arrays
    duo = pd.read_csv(root / "results" / "evaluation_duo_predictions.csv")
    assert len(duo) == len(MODES) * 3 and set(duo["mode"]) == set(MODES)
    assert list(duo.columns[:20]) == list(um.METRIC_COLUMNS)
    assert duo.gflops_balance.iloc[0] == pytest.approx(0.39 / 15.36)
    temps = dict(zip(single.full_name, single.temperature))
    expected_temps = DuoTemperatures(temps[LARGE], temps[SMALL], row.weight_large, row.weight_small)
    test_large, test_small = sets[LARGE].splits["test"], sets[SMALL].splits["test"]
    outputs = duo_outputs(test_large.logits, test_small.logits, expected_temps)
    for mode in MODES:
        out = outputs[mode]
        expected = um.compute_metrics(out.logits, test_large.labels, out.predictions, out.uncertainty["entropy"])
        got = duo[(duo["mode"] == mode) & (duo.uncertainty_type == "entropy")].iloc[0]
        for column in um.METRIC_COLUMNS:
            assert got[column] == pytest.approx(expected[column], abs=1e-12, nan_ok=True), (mode, column)
    assert (root / "results" / "evaluation_duo_predictions_ood.csv").exists()
    singles = pd.read_csv(root / "results" / "evaluation_single_model_synthetic.csv", keep_default_na=False)
    assert set(singles.wrapper) == {"None", "TempScaleWrapper"} and len(singles) == 2 * 2 * 2


def test_permuted_rows_give_identical_results(workdir, stage):
    root, sets = workdir
    aligned = root / "aligned"
    aligned.mkdir()
    write_set(sets[LARGE], aligned, ".npz")
    write_set(sets[SMALL], aligned, ".npz")
    results = {}
    for folder in ("predictions", "aligned"):
        cal, out = root / f"cal_{folder}", root / f"out_{folder}"
        assert stage(S3, "--config", root / "duos.csv", "--predictions_dir", root / folder, "--output_dir", cal)[0] == 0
        assert stage(S2, "--predictions_dir", root / folder, "--output_dir", cal)[0] == 0
        assert stage(S5, "--config", root / "duos.csv", "--predictions_dir", root / folder, "--output_dir", out,
                     "--calibrated_dir", cal, "--dataset", "d")[0] == 0
        # the sidekick's rows are in another order: its digest differs, the duo's numbers do not
        results[folder] = pd.read_csv(out / "evaluation_duo_d.csv").drop(columns="digest_small")
    pd.testing.assert_frame_equal(results["predictions"], results["aligned"])


def test_official_layout_through_every_stage(tmp_path, stage):
    sets = make_duo_logits(num_classes=5, models=(LARGE, SMALL), quality=(2.5, 1.8))
    root = tmp_path / "y-prediction" / "caltech256"
    for pset in sets.values():
        write_official(pset, root)
    duos = tmp_path / "duos.csv"
    duos.write_text(f"model_large,model_small,gflops_large,gflops_small,gflops_balance\n{LARGE},{SMALL},15.36,0.39,0.0254\n")
    cal, out = tmp_path / "cal", tmp_path / "out"
    assert stage(S2, "--prediction_dir_path", root / "val" / "raw", "--output_dir", cal)[0] == 0
    assert stage(S3, "--duo_csv_path", duos, "--prediction_dir_path", root, "--output_dir", cal)[0] == 0
    assert stage(S4, "--prediction_dir_path", root, "--save_dir", out, "--calibrated_dir", cal)[0] == 0
    code, stdout, err = stage(S5, "--duo_csv_path", duos, "--prediction_dir_path", root, "--save_dir", out,
                              "--calibrated_dir", cal, "--modes", "unweighted", "uqonly", "asymmetric")
    assert code == 0, err
    duo = pd.read_csv(out / "evaluation_duo_caltech256.csv")
    assert set(duo["mode"]) == {"unweighted", "uqonly", "asymmetric"}
    assert duo.gflops_balance.iloc[0] == 0.0254         # given balance is kept, not recomputed
    assert (out / "evaluation_single_model_caltech256_ood.csv").exists()


def test_official_temperature_csv_is_accepted(workdir, stage):
    root, sets = workdir
    cal = root / "cal"
    cal.mkdir()
    (cal / "temperature_duo.csv").write_text(f"model_large,model_small,temperature_large,temperature_small\n"
                                             f"{LARGE},{SMALL},1.25,2.5\n")
    code, _, err = stage(S5, "--config", root / "duos.csv", "--predictions_dir", root / "predictions", "--output_dir",
                         root / "out", "--calibrated_dir", cal, "--modes", "asymmetric", "--dataset", "d")
    assert code == 0, err
    got = pd.read_csv(root / "out" / "evaluation_duo_d.csv")
    large, small = sets[LARGE].splits["test"], sets[SMALL].splits["test"]
    z = large.logits.astype(np.float64) / 1.25 / 2 + small.logits.astype(np.float64) / 2.5 / 2
    expected = um.compute_metrics(z, large.labels)
    assert got[got.uncertainty_type == "softmax_response"].NLL.iloc[0] == pytest.approx(expected["NLL"], abs=1e-9)


def test_method_official_is_recorded_and_worse_or_equal(workdir, stage):
    root, _ = workdir
    args = ["--large_model_pred", root / "predictions" / f"{LARGE}.csv", "--small_model_pred",
            root / "predictions" / f"{SMALL}.csv"]
    assert stage(S3, *args, "--output_dir", root / "exact")[0] == 0
    assert stage(S3, *args, "--output_dir", root / "official", "--method", "official")[0] == 0
    exact = pd.read_csv(root / "exact" / "temperature_duo.csv").val_nll.iloc[0]
    official = pd.read_csv(root / "official" / "temperature_duo.csv").val_nll.iloc[0]
    assert exact <= official + 1e-12


def test_upsert_keeps_other_rows(workdir, stage):
    root, _ = workdir
    cal = root / "cal"
    assert stage(S2, "--predictions_dir", root / "predictions", "--output_dir", cal)[0] == 0
    before = pd.read_csv(cal / "temperature_single_model.csv")
    assert stage(S2, "--predictions", root / "predictions" / f"{SMALL}.csv", "--output_dir", cal)[0] == 0
    after = pd.read_csv(cal / "temperature_single_model.csv")
    pd.testing.assert_frame_equal(before, after)


def test_missing_temperatures(workdir, stage):
    root, _ = workdir
    args = ["--config", root / "duos.csv", "--predictions_dir", root / "predictions", "--output_dir", root / "out",
            "--calibrated_dir", root / "cal", "--dataset", "d"]
    code, _, err = stage(S5, *args)
    assert code != 0 and "3_duo_temp_scale.py" in err and f"{LARGE} + {SMALL}" in err
    assert not (root / "out").exists()
    code, _, err = stage(S5, *args, "--fit_missing")
    assert code == 0, err
    weights = pd.read_csv(root / "cal" / "temperature_duo.csv")
    assert len(weights) == 1 and len(pd.read_csv(root / "cal" / "temperature_single_model.csv")) == 2


def test_missing_prediction_files_are_skipped_and_listed(workdir, stage):
    root, _ = workdir
    duos = root / "duos3.csv"
    duos.write_text(f"model_large,model_small\n{LARGE},{SMALL}\n{LARGE},ghost_a\nghost_b,{SMALL}\n")
    args = ["--config", duos, "--predictions_dir", root / "predictions", "--output_dir", root / "out", "--dataset", "d",
            "--fit_missing", "--calibrated_dir", root / "cal"]
    code, _, err = stage(S5, *args)
    assert code == 0
    assert err.count("warning:") == 1 and "2 of 3 duo(s) skipped" in err and "2 model(s): ghost_a, ghost_b" in err
    assert len(pd.read_csv(root / "out" / "evaluation_duo_d.csv")) == len(MODES) * 3
    code, _, err = stage(S5, *args, "--strict")
    assert code != 0 and "ghost_a" in err
    nothing = root / "duos_none.csv"
    nothing.write_text("model_large,model_small\nghost_a,ghost_b\n")
    code, _, err = stage(S5, "--config", nothing, "--predictions_dir", root / "predictions", "--output_dir", root / "o2")
    assert code != 0 and "nothing evaluated" in err


def test_deep_ensemble_pool_then_calibrate(tmp_path, stage):
    members = []
    for seed in range(5):
        pset = make_duo_logits(num_classes=4, seed=100 + seed, models=(f"ResNet50_s{seed}", "unused"))[f"ResNet50_s{seed}"]
        # the same samples and labels for every member: reuse seed 100's labels and ids
        members.append(pset)
    reference = members[0]
    for pset in members[1:]:
        for name, split in pset.splits.items():
            split.labels = reference.splits[name].labels
            split.ids = reference.splits[name].ids
    paths = [write_set(p, tmp_path / "preds") for p in members]
    args = ["--members", *paths, "--sizes", 1, 2, 5, "--subsets", 4, "--output_dir", tmp_path / "out", "--seed", 3]
    code, _, err = stage(S8, *args)
    assert code == 0, err
    frame = pd.read_csv(tmp_path / "out" / "evaluation_deep_ensemble_synthetic.csv")
    per_subset = frame[~frame.subset.isin(["mean", "std"])]
    counts = per_subset[per_subset.uncertainty_type == "softmax_response"].groupby("m").size().to_dict()
    assert counts == {1: 4, 2: 4, 5: 1}            # C(5,5) = 1 < 4: every subset, once
    assert set(frame.model) == {"ResNet50_s"}
    # one m=2 subset recomputed by hand: average logits, fit T on val, evaluate test
    row = per_subset[(per_subset.m == 2) & (per_subset.uncertainty_type == "softmax_response")].iloc[0]
    chosen = [next(p for p in members if p.model == name) for name in row.members.split("+")]
    val = sum(p.splits["val"].logits.astype(np.float64) for p in chosen) / 2
    temperature = ct.fit_temperature(val, reference.splits["val"].labels).temperature
    test = sum(p.splits["test"].logits.astype(np.float64) for p in chosen) / 2 / temperature
    assert row.NLL == pytest.approx(um.compute_metrics(test, reference.splits["test"].labels)["NLL"], abs=1e-12)
    mean_row = frame[(frame.subset == "mean") & (frame.m == 2) & (frame.uncertainty_type == "softmax_response")].iloc[0]
    m2 = per_subset[(per_subset.m == 2) & (per_subset.uncertainty_type == "softmax_response")]
    assert mean_row.Acc == pytest.approx(m2.Acc.mean())
    # reproducible: the same seed draws the same subsets
    shutil.rmtree(tmp_path / "out")
    assert stage(S8, *args)[0] == 0
    again = pd.read_csv(tmp_path / "out" / "evaluation_deep_ensemble_synthetic.csv")
    pd.testing.assert_frame_equal(frame, again)


def test_combine_probs_averages_probabilities_in_stages_5_and_8(workdir, stage):
    root, sets = workdir
    large, small = sets[LARGE].splits["test"], sets[SMALL].splits["test"]
    code, _, err = stage(S5, "--config", root / "duos.csv", "--predictions_dir", root / "predictions", "--output_dir",
                         root / "results", "--calibrated_dir", root / "cal", "--fit_missing", "--dataset", "syn",
                         "--modes", "unweighted", "--combine", "probs")
    assert code == 0, err
    assert not (root / "results" / "evaluation_duo_syn.csv").exists()     # the paper's file is untouched
    row = pd.read_csv(root / "results" / "evaluation_duo_probs_syn.csv").query("uncertainty_type == 'softmax_response'")
    small_by_id = dict(zip(small.ids, small.logits.astype(np.float64)))
    aligned = np.stack([small_by_id[i] for i in large.ids])
    p = (softmax_rows(large.logits.astype(np.float64)) + softmax_rows(aligned)) / 2
    assert row.NLL.iloc[0] == pytest.approx(-np.mean(np.log(p[np.arange(len(p)), large.labels])), abs=1e-12)
    assert row.Acc.iloc[0] == pytest.approx(np.mean(p.argmax(1) == large.labels), abs=1e-12)
    # stage 8: the members' mean probabilities, then one temperature fitted on val
    code, _, err = stage(S8, "--members", root / "predictions" / f"{LARGE}.csv", root / "predictions" / f"{SMALL}.csv",
                         "--sizes", 2, "--output_dir", root / "results", "--dataset", "syn", "--combine", "probs")
    assert code == 0, err
    ensemble = pd.read_csv(root / "results" / "evaluation_deep_ensemble_probs_syn.csv")
    got = ensemble[(ensemble.subset == "0") & (ensemble.uncertainty_type == "softmax_response")].iloc[0]
    val_large, val_small = sets[LARGE].splits["val"], sets[SMALL].splits["val"]
    val_by_id = dict(zip(val_small.ids, val_small.logits.astype(np.float64)))
    val_p = (softmax_rows(val_large.logits.astype(np.float64))
             + softmax_rows(np.stack([val_by_id[i] for i in val_large.ids]))) / 2
    temperature = ct.fit_temperature(np.log(val_p), val_large.labels).temperature
    expected = um.compute_metrics(np.log(p) / temperature, large.labels)
    assert got.NLL == pytest.approx(expected["NLL"], abs=1e-10) and got.ECE == pytest.approx(expected["ECE"], abs=1e-10)
    # the official pre-averaged files hold logits: probability averaging cannot apply
    code, _, err = stage(S8, "--prediction_dir", root / "predictions", "--combine", "probs")
    assert code != 0 and "--combine probs" in err


def softmax_rows(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_a_model_worse_than_uniform_keeps_its_predictions_when_temperature_scaled(tmp_path, stage):
    """Val NLL lowest at T = inf: stage 2 warns and records inf; stage 4's temperature-scaled rows are
    uniform probabilities (NLL = log K) with the model's own predictions (the raw accuracy)."""
    pset = make_duo_logits(num_classes=6)["large"]
    for split in pset.splits.values():
        split.logits = -split.logits            # confidently wrong everywhere
    path = write_set(pset, tmp_path / "p")
    code, _, err = stage(S2, "--predictions", path, "--output_dir", tmp_path / "cal")
    assert code == 0 and "lowest at T = inf" in err
    assert pd.read_csv(tmp_path / "cal" / "temperature_single_model.csv").temperature.item() == np.inf
    code, _, err = stage(S4, "--predictions_dir", tmp_path / "p", "--output_dir", tmp_path / "res", "--calibrated_dir",
                         tmp_path / "cal")
    assert code == 0, err
    rows = pd.read_csv(tmp_path / "res" / "evaluation_single_model_synthetic.csv", keep_default_na=False)
    rows = rows[rows.uncertainty_type == "softmax_response"].set_index("wrapper")
    test = pset.splits["test"]
    assert rows.loc["TempScaleWrapper", "Acc"] == rows.loc["None", "Acc"] == pytest.approx(
        np.mean(test.logits.argmax(1) == test.labels))
    assert rows.loc["TempScaleWrapper", "NLL"] == pytest.approx(np.log(6))


def test_dynamic_duo_runs_of_each_mode_and_optimizer_keep_their_rows_and_fits(tmp_path, stage):
    sets = make_duo_logits(num_classes=4, sizes={"val": 60, "test": 50})
    for pset in sets.values():
        write_set(pset, tmp_path / "predictions")
        write_features(pset, tmp_path / "predictions" / f"{pset.model}.features.npz")
    for mode, optimizer in (("concat", "lbfgs"), ("separate", "adam")):
        code, _, err = stage("evaluate/3dy_duo_temp_scale.py", "--large_model_pred", tmp_path / "predictions" / "large.npz",
                             "--small_model_pred", tmp_path / "predictions" / "small.npz", "--output_dir",
                             tmp_path / "results", "--calibrated_dir", tmp_path / "calibrated", "--mode", mode,
                             "--optimizer", optimizer, "--num_epochs", 2, "--dataset", "d")
        assert code == 0, err
    rows = pd.read_csv(tmp_path / "results" / "evaluation_dynamic_duo_d.csv")
    assert set(rows["mode"]) == {"dynamic_concat_lbfgs", "dynamic_separate_adam"}
    assert sorted(p.name for p in (tmp_path / "calibrated" / "dynamic_duo").iterdir()) == [
        "large+small_concat_lbfgs.pt", "large+small_separate_adam.pt"]
