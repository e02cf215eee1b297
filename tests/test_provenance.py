"""Files that know what they are: temperatures record the dataset and the val predictions they were fitted on,
result rows the digests of their predictions and the temperatures they used; every reader that combines files
refuses two that do not belong together (another dataset, a stale run), and a rerun replaces a model's rows in
every split file."""
import os
import time

import numpy as np
import pandas as pd
import pytest

from tests.conftest import snapshot
from tests.helpers import make_duo_logits, write_set
from utils.files.prediction_io import PredictionSet, Split, read_predictions

S2, S3, S4, S5, S7, S8, S9 = ("evaluate/2_temp_scale.py", "evaluate/3_duo_temp_scale.py",
                              "evaluate/4_evaluate_predictions.py", "evaluate/5_evaluate_duo_predictions.py",
                              "evaluate/7_evaluate_cascades.py", "evaluate/8_evaluate_deep_ensemble.py",
                              "evaluate/9_make_report.py")


def dataset_sets(dataset: str, seed: int) -> dict[str, PredictionSet]:
    sets = make_duo_logits(num_classes=5, seed=seed)
    for pset in sets.values():
        pset.meta["dataset"] = dataset
    return sets


def repredicted(path, seed: int) -> PredictionSet:
    """The prediction file at `path` as another checkpoint of the model would give it: the same samples and labels,
    other logits."""
    pset = read_predictions(path)
    rng = np.random.default_rng(seed)
    splits = {name: Split((split.logits + rng.normal(scale=0.5, size=split.logits.shape)).astype(np.float32),
                          split.labels, split.ids) for name, split in pset.splits.items()}
    return PredictionSet(pset.model, splits, dict(pset.meta))


def run_all(stage, root, preds, cal, out, bootstrap=()):
    duos = root / "duos.csv"
    common = ["--predictions_dir", preds, "--calibrated_dir", cal, "--output_dir", out]
    for script, args in ((S2, ["--predictions_dir", preds, "--output_dir", cal]),
                         (S3, ["--config", duos, "--predictions_dir", preds, "--output_dir", cal]),
                         (S4, [*common, *bootstrap]), (S5, ["--config", duos, *common, *bootstrap]),
                         (S7, ["--config", duos, *common, "--budgets", "1.05"])):
        code, _, err = stage(script, *args)
        assert code == 0, (script, err)


@pytest.fixture
def two_datasets(tmp_path, stage):
    """alpha/ and beta/: the same model names on two datasets; calibrated/ and results/ from a full run on alpha."""
    (tmp_path / "duos.csv").write_text("model_large,model_small,gflops_large,gflops_small\nlarge,small,10,1\n")
    for dataset, seed in (("alpha", 0), ("beta", 7)):
        for pset in dataset_sets(dataset, seed).values():
            write_set(pset, tmp_path / dataset)
    run_all(stage, tmp_path, tmp_path / "alpha", tmp_path / "calibrated", tmp_path / "results")
    return tmp_path


def applying_entry_points(root, preds):
    common = ["--predictions_dir", preds, "--calibrated_dir", root / "calibrated", "--output_dir", root / "out"]
    return {"stage 4": [S4, *common], "stage 5": [S5, "--config", root / "duos.csv", *common],
            "stage 7": [S7, "--config", root / "duos.csv", *common],
            "report curves": [S9, "--results_dir", root / "results", "--predictions_dir", preds, "--calibrated_dir",
                              root / "calibrated", "--output", root / "out" / "REPORT.md"]}


@pytest.mark.parametrize("entry", ["stage 4", "stage 5", "stage 7", "report curves"])
def test_temperatures_fitted_on_another_dataset_are_refused(two_datasets, stage, entry):
    script, *args = applying_entry_points(two_datasets, two_datasets / "beta")[entry]
    before = snapshot(two_datasets)
    code, _, err = stage(script, *args)
    assert code == 2 and "beta/" in err, err
    assert snapshot(two_datasets) == before
    if entry == "report curves":        # the report first finds that its results came from other predictions
        assert "the report's curves would be drawn from predictions" in err, err
        return
    assert "calibrated/temperature_" in err and "it was fitted on dataset 'alpha'" in err, err
    assert "refit it: `python evaluate/" in err and "one --calibrated_dir per dataset" in err


@pytest.mark.parametrize("entry", ["stage 4", "stage 5", "stage 7", "report curves"])
def test_temperatures_of_predictions_made_again_are_refused(two_datasets, stage, entry):
    # large re-predicted on alpha (another checkpoint): its temperature and the duo weights are stale
    write_set(repredicted(two_datasets / "alpha" / "large.npz", 3), two_datasets / "alpha")
    script, *args = applying_entry_points(two_datasets, two_datasets / "alpha")[entry]
    code, _, err = stage(script, *args)
    expected = ("the report's curves would be drawn from predictions" if entry == "report curves" else
                "it was fitted on a val split with digest")
    assert code == 2 and expected in err, err


@pytest.mark.parametrize("script", [S3, S5, S7, S8])
def test_two_prediction_files_of_different_datasets_are_never_combined(two_datasets, stage, script):
    mixed = two_datasets / "mixed"
    mixed.mkdir()
    os.link(two_datasets / "alpha" / "large.npz", mixed / "large.npz")
    os.link(two_datasets / "beta" / "small.npz", mixed / "small.npz")
    args = {S3: ["--config", two_datasets / "duos.csv", "--predictions_dir", mixed, "--output_dir", two_datasets / "c2"],
            S8: ["--members", mixed / "large.npz", mixed / "small.npz", "--sizes", "2", "--output_dir",
                 two_datasets / "r2"]}.get(script, ["--config", two_datasets / "duos.csv", "--predictions_dir", mixed,
                                                    "--calibrated_dir", two_datasets / "c2", "--output_dir",
                                                    two_datasets / "r2", "--fit_missing"])
    code, _, err = stage(script, *args)
    assert code == 2 and "records dataset 'alpha'" in err and "records 'beta'" in err, err
    assert not (two_datasets / "c2").exists() and not (two_datasets / "r2").exists()


@pytest.mark.parametrize("name", ["syn_ood", "SYN_OOD", "probs_x", "delta_x"])
def test_dataset_names_that_collide_with_the_file_naming_are_refused(two_datasets, stage, name):
    code, _, err = stage(S4, "--predictions_dir", two_datasets / "alpha", "--calibrated_dir", two_datasets / "calibrated",
                         "--output_dir", two_datasets / "r3", "--dataset", name)
    assert code == 2 and "which result file names use" in err, err
    assert not (two_datasets / "r3").exists()


def test_a_results_row_whose_split_disagrees_with_its_file_name_is_refused(two_datasets, stage):
    path = two_datasets / "results" / "evaluation_single_model_alpha.csv"
    frame = pd.read_csv(path, keep_default_na=False)
    frame.loc[0, "split"] = "ood_test"                   # would shadow the real ood row in the report
    frame.to_csv(path, index=False)
    code, _, err = stage(S9, "--results_dir", two_datasets / "results", "--calibrated_dir", two_datasets / "calibrated")
    assert code == 2 and "data row 1 is a 'ood_test' row, but this file holds 'test' rows" in err, err


def test_stale_cascade_rows_next_to_fresh_duo_rows_are_refused(two_datasets, stage):
    # the sidekick is re-predicted and stages 2-5 rerun, stage 7 is forgotten
    write_set(repredicted(two_datasets / "alpha" / "small.npz", 11), two_datasets / "alpha")
    time.sleep(0.01)
    preds, cal, out = two_datasets / "alpha", two_datasets / "calibrated", two_datasets / "results"
    common = ["--predictions_dir", preds, "--calibrated_dir", cal, "--output_dir", out]
    for script, args in ((S2, ["--predictions_dir", preds, "--output_dir", cal]),
                         (S3, ["--config", two_datasets / "duos.csv", "--predictions_dir", preds, "--output_dir", cal]),
                         (S4, common), (S5, ["--config", two_datasets / "duos.csv", *common])):
        assert stage(script, *args)[0] == 0
    code, _, err = stage(S9, "--results_dir", out, "--calibrated_dir", cal)
    assert code == 2 and "evaluation_cascade_alpha" in err and "were computed from different predictions of small" in err
    assert "rerun evaluate/7_evaluate_cascades.py" in err, err
    assert stage(S7, "--config", two_datasets / "duos.csv", *common)[0] == 0        # the fix the error names
    assert stage(S9, "--results_dir", out, "--calibrated_dir", cal)[0] == 0


def test_results_from_temperatures_refitted_since_are_refused(two_datasets, stage):
    preds, cal, out = two_datasets / "alpha", two_datasets / "calibrated", two_datasets / "results"
    assert stage(S2, "--predictions_dir", preds, "--output_dir", cal, "--method", "official")[0] == 0
    assert stage(S4, "--predictions_dir", preds, "--calibrated_dir", cal, "--output_dir", out)[0] == 0
    code, _, err = stage(S9, "--results_dir", out, "--calibrated_dir", cal)
    # stage 5's unweighted_ts rows and stage 7's cascades used the earlier temperatures
    assert code == 2 and "were computed from different temperature of" in err, err


def test_a_rerun_replaces_all_of_a_models_rows_splits_it_no_longer_has_included(two_datasets, stage):
    preds, cal, out = two_datasets / "alpha", two_datasets / "calibrated", two_datasets / "results"
    small = read_predictions(preds / "small.npz")
    without_ood = PredictionSet("small", {k: v for k, v in small.splits.items() if k != "ood_test"}, dict(small.meta))
    write_set(without_ood, preds)
    common = ["--predictions_dir", preds, "--calibrated_dir", cal, "--output_dir", out]
    assert stage(S2, "--predictions", preds / "small.npz", "--output_dir", cal)[0] == 0
    assert stage(S4, *common)[0] == 0
    ood = pd.read_csv(out / "evaluation_single_model_alpha_ood.csv")
    assert set(ood.model) == {"large"}                          # the sidekick's old ood rows are gone
    code, _, err = stage(S5, "--config", two_datasets / "duos.csv", *common)
    assert code == 0 and "has no 'ood_test' split; skipped it" in err
    assert pd.read_csv(out / "evaluation_duo_alpha_ood.csv").empty     # the pair's old ood rows too
    assert len(pd.read_csv(out / "evaluation_duo_alpha.csv")) == 15


def test_stale_bootstrap_rows_are_left_out_by_their_digests(two_datasets, stage):
    preds, cal, out = two_datasets / "alpha", two_datasets / "calibrated", two_datasets / "results"
    run_all(stage, two_datasets, preds, cal, out, bootstrap=("--bootstrap", "100"))
    write_set(repredicted(preds / "small.npz", 5), preds)
    common = ["--predictions_dir", preds, "--calibrated_dir", cal, "--output_dir", out]
    for script, args in ((S2, ["--predictions_dir", preds, "--output_dir", cal]),
                         (S3, ["--config", two_datasets / "duos.csv", "--predictions_dir", preds, "--output_dir", cal]),
                         (S4, common), (S5, ["--config", two_datasets / "duos.csv", *common]),
                         (S7, ["--config", two_datasets / "duos.csv", *common])):
        assert stage(script, *args)[0] == 0
    code, out_text, err = stage(S9, "--results_dir", out, "--calibrated_dir", cal)
    assert code == 0, err
    report = (out / "REPORT.md").read_text()
    assert "paired-bootstrap row(s) are left out" in report


def test_temperature_rows_of_the_official_layout_are_used_unchecked_with_a_warning(two_datasets, stage):
    cal = two_datasets / "official_cal"
    cal.mkdir()
    frame = pd.read_csv(two_datasets / "calibrated" / "temperature_single_model.csv")
    frame[["full_name", "temperature"]].to_csv(cal / "temperature_single_model.csv", index=False)
    code, _, err = stage(S4, "--predictions_dir", two_datasets / "alpha", "--calibrated_dir", cal, "--output_dir",
                         two_datasets / "r4")
    assert code == 0 and "records neither the dataset nor the predictions it was fitted on" in err, err


def test_result_rows_record_their_inputs(two_datasets):
    out = two_datasets / "results"
    large, small = (read_predictions(two_datasets / "alpha" / f"{m}.npz") for m in ("large", "small"))
    temperatures = pd.read_csv(two_datasets / "calibrated" / "temperature_single_model.csv").set_index("full_name")
    assert temperatures.loc["large", "digest"] == large.split_digest("val")
    assert temperatures.loc["large", "dataset"] == "alpha"
    single = pd.read_csv(out / "evaluation_single_model_alpha.csv")
    assert set(single.digest[single.model == "large"]) == {large.digest}
    ts = single[(single.model == "large") & (single.wrapper == "TempScaleWrapper")]
    assert np.allclose(ts.temperature, temperatures.loc["large", "temperature"])
    duo = pd.read_csv(out / "evaluation_duo_alpha.csv")
    assert set(duo.digest_large) == {large.digest} and set(duo.digest_small) == {small.digest}
    weights = pd.read_csv(two_datasets / "calibrated" / "temperature_duo.csv").iloc[0]
    asym = duo[duo["mode"] == "asymmetric"]
    assert np.allclose(asym.scale_large, 2 * weights.weight_large) and np.allclose(asym.scale_small, 2 * weights.weight_small)
    cascade = pd.read_csv(out / "evaluation_cascade_alpha.csv")
    assert set(cascade.digest_small) == {small.digest}
    assert np.allclose(cascade.temperature_large, temperatures.loc["large", "temperature"])


def test_the_digest_follows_content_and_row_order():
    # row order is part of a split: the ranking metrics break ties in uncertainty by sample order
    pset = make_duo_logits()["large"]
    reordered = PredictionSet("large", {k: Split(v.logits[::-1], v.labels[::-1], v.ids[::-1])
                                        for k, v in pset.splits.items()}, dict(pset.meta))
    assert reordered.digest != pset.digest
    changed = PredictionSet("large", dict(pset.splits), dict(pset.meta))
    test = pset.splits["test"]
    changed.splits["test"] = Split(test.logits + np.float32(1e-3), test.labels, test.ids)
    assert changed.digest != pset.digest and changed.split_digest("val") == pset.split_digest("val")
    assert PredictionSet("large", dict(pset.splits), {**pset.meta, "kind": "log_probs"}).digest != pset.digest
    copy = PredictionSet("large", {k: Split(v.logits.copy(), v.labels.copy(), v.ids.copy())
                                   for k, v in pset.splits.items()}, dict(pset.meta))
    assert copy.digest == pset.digest
