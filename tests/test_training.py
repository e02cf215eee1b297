"""Training and baselines on a tiny fixture dataset: hp_tune (Ray Tune), soups, IVON, Laplace, dynamic duos."""
import importlib
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch

from load_models import dynamic_duo, laplace_tools, model_loader
from tests import dataset_trees
from tests.conftest import REPO, snapshot
from train import soups, tuning
from utils.files.prediction_io import read_predictions

hp_tune = importlib.import_module("train.hp_tune")
COMMON = ["--dataset", "caltech256", "--weights", "none", "--image_size", 16, "--batch_size", 8, "--num_workers", 0,
          "--cpus_per_trial", 1]


def failing_trials(indices: set):
    """tuning.trial, except that the trials numbered `indices` raise when they start. Injected with monkeypatch;
    Ray pickles this closure by value into its workers, so production code carries no test hook."""
    real = tuning.trial

    def trial(config):
        from ray import tune
        if int(tune.get_context().get_trial_id().rsplit("_", 1)[-1]) in indices:
            raise RuntimeError("this trial fails on purpose (test)")
        return real(config)
    return trial


@pytest.fixture(scope="module")
def trained(tmp_path_factory, ray_session):
    root = tmp_path_factory.mktemp("train")
    dataset_trees.make_caltech256(root / "data")
    args = ["--model", "resnet10t", "--source", "timm", *COMMON, "--data_dir", root / "data", "--output_dir",
            root / "ck", "--lp_samples", 2, "--num_samples", 3, "--epochs_lp", 1, "--epochs_ff", 2,
            "--channels_last", "--accumulate", 2]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tuning, "trial", failing_trials({1}))
        assert hp_tune.main([str(a) for a in args]) == 0
    return root, args


@pytest.mark.slow
def test_hp_tune_outputs(trained):
    root, _ = trained
    out = root / "ck" / "caltech256"
    for path in (out / "lp" / "resnet10t.pth", out / "ff" / "resnet10t.pth", root / "ck" / "resnet10t_best.pth"):
        model, record = model_loader.load_model_from_checkpoint(path)
        assert record["num_classes"] == 4 and record["model_name"] == "resnet10t" and "val_metric" in record
    trials = pd.read_csv(out / "soup" / "resnet10t_trials.csv")
    assert len(trials) == 2                                  # trial 1 raised on purpose: tolerated, left out
    assert all((out / "soup" / "resnet10t" / f"trial{i}.pth").exists() for i in trials.trial)
    ff = pd.read_csv(out / "optimal_hyperparams_ff.csv")
    assert ff.trials_ok.item() == 2 and ff.trials_failed.item() == 1
    assert 1e-6 <= ff.lr.item() <= 3e-4 and 1e-8 <= ff.weight_decay.item() <= 1e-5
    lp = pd.read_csv(out / "optimal_hyperparams_lp.csv")
    assert 1e-4 <= lp.lr.item() <= 1e-2


def private_copy(trained, tmp_path):
    """The trained checkpoint root copied for a test that changes it, so no test depends on another's order."""
    root, args = trained
    shutil.copytree(root / "ck", tmp_path / "ck")
    return tmp_path, [tmp_path / "ck" if arg == root / "ck" else arg for arg in args]


@pytest.mark.slow
def test_hp_tune_rerun_reuses_lp_and_keeps_a_better_record(trained, capsys, tmp_path):
    root, args = private_copy(trained, tmp_path)
    out = root / "ck" / "caltech256"
    lp_bytes = (out / "lp" / "resnet10t.pth").read_bytes()
    best = pd.read_csv(out / "optimal_hyperparams_ff.csv")
    # pretend the stored FT record is unbeatable: the rerun must keep it and its checkpoint
    best.loc[0, "val_metric"] = 2.0
    best.to_csv(out / "optimal_hyperparams_ff.csv", index=False)
    ff_bytes = (out / "ff" / "resnet10t.pth").read_bytes()
    assert hp_tune.main([str(a) for a in args] + ["--num_samples", "1"]) == 0
    captured = capsys.readouterr()
    assert "== LP: reusing" in captured.out and "kept it" in captured.err
    assert (out / "lp" / "resnet10t.pth").read_bytes() == lp_bytes
    assert (out / "ff" / "resnet10t.pth").read_bytes() == ff_bytes
    assert pd.read_csv(out / "optimal_hyperparams_ff.csv").val_metric.item() == 2.0
    assert len(pd.read_csv(out / "soup" / "resnet10t_trials.csv")) == 3      # soup ingredients accumulate


@pytest.mark.slow
def test_hp_tune_resume_is_idempotent(trained, capsys, tmp_path, monkeypatch):
    """Restoring a finished search (the slurm template passes --resume on every requeue) any number of
    times leaves the same soup trial list and the same trial files."""
    root, args = private_copy(trained, tmp_path)
    monkeypatch.setattr(tuning, "trial", failing_trials({1}))        # the errored trial, rerun, fails again
    out = root / "ck" / "caltech256"
    before = snapshot(out / "soup")
    for _ in range(2):
        assert hp_tune.main([str(a) for a in args] + ["--resume"]) == 0
        assert snapshot(out / "soup") == before
    printed = capsys.readouterr().out
    assert printed.count("resuming the FF search") == 2 and printed.count("0 new trial(s)") == 2


@pytest.mark.slow
def test_trained_checkpoints_feed_stage_1(trained, stage):
    root, _ = trained
    code, out, err = stage("evaluate/1_single_model_prediction.py", "--model_path", root / "ck" / "resnet10t_best.pth",
                           "--dataset", "caltech256", "--data_dir", root / "data", "--output_dir", root / "preds",
                           "--num_workers", 0, "--channels_last", "--precision", "bf16")
    assert code == 0, err
    assert read_predictions(root / "preds" / "resnet10t.npz").num_classes == 4


@pytest.mark.slow
def test_make_soup(trained, stage):
    root, _ = trained
    code, out, err = stage("train/make_soup.py", "--model", "resnet10t", "--dataset", "caltech256", "--data_dir",
                           root / "data", "--output_dir", root / "ck", "--num_workers", 0)
    assert code == 0, err
    ff = root / "ck" / "caltech256" / "ff"
    soup = root / "ck" / "caltech256" / "soup"
    trials = pd.read_csv(soup / "resnet10t_trials.csv")
    states = [model_loader.read_checkpoint(soup / p)["state_dict"] for p in trials.checkpoint]   # relative to the CSV
    uniform = model_loader.read_checkpoint(ff / "resnet10t_uniform.pth")["state_dict"]
    for key, value in uniform.items():
        if value.is_floating_point():
            assert torch.allclose(value, torch.stack([s[key] for s in states]).mean(0), atol=1e-6), key
    assert (ff / "resnet10t_greedy.pth").exists()
    used = pd.read_csv(root / "ck" / "caltech256" / "soup" / "resnet10t_soups.csv")
    assert set(used.soup) == {"uniform", "greedy"}


def test_greedy_soup_adds_only_improving_ingredients():
    # one scalar "weight"; the metric is -|w - 1|. Ingredients (best first): 2, 0, 5, 1.
    states = [{"w": torch.tensor([v])} for v in (2.0, 0.0, 5.0, 1.0)]
    soup, used, history = soups.greedy_soup(states, lambda s: -abs(float(s["w"]) - 1.0))
    # 2 -> mean(2, 0) = 1 improves; mean(2, 0, 5) = 2.33 does not; mean(2, 0, 1) = 1 does not strictly improve
    assert used == [0, 1] and float(soup["w"]) == pytest.approx(1.0)
    assert history == pytest.approx([-1.0, 0.0, -4 / 3, 0.0])
    mean, count = soups.uniform_soup(iter(states))
    assert count == 4 and float(mean["w"]) == pytest.approx(2.0)


@pytest.mark.slow
def test_ivon_writes_log_probabilities(trained, stage):
    root, _ = trained
    code, out, err = stage("train/ivon_train.py", "--model", "resnet10t", "--dataset", "caltech256", "--data_dir",
                           root / "data", "--output_dir", root / "ck", "--predictions_dir", root / "preds", "--epochs", 1,
                           "--batch_size", 8, "--num_workers", 0, "--test_samples", 3)
    assert code == 0, err
    mc = read_predictions(root / "preds" / "resnet10t_ivon.npz")
    det = read_predictions(root / "preds" / "resnet10t_ivon_det.npz")
    assert mc.meta["kind"] == "log_probs" and det.meta["kind"] == "logits"
    for split in mc.splits.values():
        assert np.allclose(np.exp(split.logits.astype(np.float64)).sum(1), 1.0, atol=1e-5)
        assert (split.logits <= 1e-6).all()
    assert "ivon_state" in model_loader.read_checkpoint(root / "ck" / "caltech256" / "ivon" / "resnet10t.pth")
    # paper Table 3: several sample counts and repeats from the saved posterior, without training again
    code, out, err = stage("train/ivon_train.py", "--model", "resnet10t", "--dataset", "caltech256", "--data_dir",
                           root / "data", "--output_dir", root / "ck", "--predictions_dir", root / "table3",
                           "--batch_size", 8, "--num_workers", 0, "--predict_only", "--test_samples", 1, 2,
                           "--repeats", 2)
    assert code == 0, err
    assert "epoch" not in out
    names = sorted(p.stem for p in (root / "table3").glob("*.npz"))
    assert names == ["resnet10t_ivon_det", "resnet10t_ivon_mc1_r0", "resnet10t_ivon_mc1_r1", "resnet10t_ivon_mc2_r0",
                     "resnet10t_ivon_mc2_r1"]
    again = read_predictions(root / "table3" / "resnet10t_ivon_det.npz")
    assert all(np.array_equal(again.splits[s].logits, det.splits[s].logits) for s in det.splits)   # same posterior
    r0, r1 = (read_predictions(root / "table3" / f"resnet10t_ivon_mc2_r{r}.npz") for r in (0, 1))
    assert r0.meta["test_samples"] == 2 and r1.meta["repeat"] == 1
    assert not np.array_equal(r0.splits["test"].logits, r1.splits["test"].logits)       # independent draws
    code, _, err = stage("train/ivon_train.py", "--model", "resnet10t", "--dataset", "caltech256", "--data_dir",
                         root / "data", "--output_dir", root / "nothing_here", "--predict_only", "--num_workers", 0)
    assert code == 2 and "--predict_only:" in err and "not found" in err


@pytest.mark.slow
def test_laplace_writes_log_probabilities(trained, stage):
    root, _ = trained
    code, out, err = stage("evaluate/6_laplace.py", "--model_path", root / "ck" / "caltech256" / "ff" / "resnet10t.pth",
                           "--dataset", "caltech256", "--data_dir", root / "data", "--predictions_dir", root / "preds",
                           "--num_workers", 0)
    assert code == 0, err
    pset = read_predictions(root / "preds" / "resnet10t_LA.npz")
    assert pset.meta["kind"] == "log_probs" and pset.model == "resnet10t_LA"
    for split in pset.splits.values():
        assert np.allclose(np.exp(split.logits.astype(np.float64)).sum(1), 1.0, atol=1e-5)


def test_closed_form_kron_predictive_equals_the_library():
    from laplace import Laplace
    torch.manual_seed(0)
    features, labels = torch.randn(200, 6), torch.randint(0, 4, (200,))
    head = torch.nn.Sequential(torch.nn.Identity(), torch.nn.Linear(6, 4))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(features, labels), batch_size=50)
    la = Laplace(head, "classification", subset_of_weights="last_layer", hessian_structure="kron")
    la.fit(loader)
    la.prior_precision = 0.7
    x = torch.randn(30, 6)
    _, library_var = la._glm_predictive_distribution(x)
    library_probs = la(x, pred_type="glm", link_approx="probit")
    assert laplace_tools.use_fast_kron_predictive(la)
    _, fast_var = la._glm_predictive_distribution(x)
    assert torch.allclose(fast_var, library_var, rtol=1e-4, atol=1e-6)
    assert torch.allclose(la(x, pred_type="glm", link_approx="probit"), library_probs, atol=1e-6)


def test_dynamic_duo_beats_constant_temperatures():
    # The large model is reliable on half the samples, the sidekick on the other half; a feature
    # says which half. Per-sample temperatures can exploit that; constant ones cannot.
    rng = np.random.default_rng(0)
    n, k = 600, 5
    labels = rng.integers(0, k, n)
    large_good = rng.random(n) < 0.5
    large, small = rng.normal(size=(n, k)), rng.normal(size=(n, k))
    large[np.arange(n), labels] += np.where(large_good, 4.0, 0.0)
    small[np.arange(n), labels] += np.where(large_good, 0.0, 4.0)
    feats_large = np.c_[large_good.astype(float), rng.normal(size=(n, 3))]
    feats_small = rng.normal(size=(n, 2))
    model = dynamic_duo.DynamicTemperatures(4, 2, "concat")
    history = dynamic_duo.fit(model, large, small, feats_large, feats_small, labels)
    from utils.maths.calibrate_temperature import fit_duo_weights
    static = fit_duo_weights(large, small, labels)
    assert history[-1] < history[0] and history[-1] < static.nll - 0.1
    adam = dynamic_duo.DynamicTemperatures(4, 2, "separate")
    assert dynamic_duo.fit(adam, large, small, feats_large, feats_small, labels, optimizer="adam")[-1] < history[0]


def test_slurm_scripts_parse():
    for script in ("train_array.sh", "predict_array.sh", "ray_cluster.sh"):
        assert subprocess.run(["bash", "-n", str(REPO / "slurm" / script)]).returncode == 0


@pytest.mark.slow
def test_dynamic_duo_script(trained, stage):
    root, _ = trained
    soup = root / "ck" / "caltech256" / "soup" / "resnet10t"
    for checkpoint in (root / "ck" / "resnet10t_best.pth", soup / "trial0.pth"):
        assert stage("evaluate/1_single_model_prediction.py", "--model_path", checkpoint, "--dataset", "caltech256",
                     "--data_dir", root / "data", "--output_dir", root / "dyn", "--num_workers", 0, "--features")[0] == 0
    code, out, err = stage("evaluate/3dy_duo_temp_scale.py", "--large_model_pred", root / "dyn" / "resnet10t.npz",
                           "--small_model_pred", root / "dyn" / "trial0.npz", "--output_dir", root / "dyn_results",
                           "--calibrated_dir", root / "dyn_cal")
    assert code == 0, err
    rows = pd.read_csv(root / "dyn_results" / "evaluation_dynamic_duo_caltech256.csv")
    assert set(rows["mode"]) == {"dynamic_concat_lbfgs"} and len(rows) == 2
    assert (root / "dyn_cal" / "dynamic_duo" / "resnet10t+trial0_concat_lbfgs.pt").exists()


@pytest.mark.slow
def test_one_trial_hp_tune_is_reproducible(tmp_path, ray_session):
    dataset_trees.make_caltech256(tmp_path / "data")
    records = []
    for run in ("a", "b"):
        args = ["--model", "resnet10t", "--source", "timm", *COMMON, "--data_dir", tmp_path / "data", "--output_dir",
                tmp_path / run, "--lp_samples", 1, "--num_samples", 1, "--epochs_lp", 1, "--epochs_ff", 1, "--seed", 5]
        assert hp_tune.main([str(a) for a in args]) == 0
        records.append(model_loader.read_checkpoint(tmp_path / run / "caltech256" / "ff" / "resnet10t.pth"))
    assert records[0]["val_metric"] == records[1]["val_metric"]
    assert records[0]["hyperparameters"] == records[1]["hyperparameters"]
    for key, value in records[0]["state_dict"].items():
        assert torch.equal(value, records[1]["state_dict"][key]), key


@pytest.mark.slow
def test_resume_restores_the_search(tmp_path, ray_session, capsys, monkeypatch):
    dataset_trees.make_caltech256(tmp_path / "data")
    base = ["--model", "resnet10t", "--source", "timm", *COMMON, "--data_dir", tmp_path / "data", "--output_dir",
            tmp_path / "ck", "--lp_samples", 1, "--num_samples", 2, "--epochs_lp", 1, "--epochs_ff", 1]
    monkeypatch.setattr(tuning, "trial", failing_trials({1}))
    assert hp_tune.main([str(a) for a in base]) == 0
    first = pd.read_csv(tmp_path / "ck" / "caltech256" / "optimal_hyperparams_ff.csv")
    assert first.trials_failed.item() == 1
    capsys.readouterr()
    assert hp_tune.main([str(a) for a in base + ["--resume"]]) == 0
    out = capsys.readouterr().out
    assert "resuming the FF search" in out
    second = pd.read_csv(tmp_path / "ck" / "caltech256" / "optimal_hyperparams_ff.csv")
    # the restored search keeps its trials and their stored configs: the finished trial is not retrained,
    # the errored one is rerun with its own config (which still asks it to fail)
    assert second.trials_ok.item() == 1 and second.trials_failed.item() == 1
    assert second.val_metric.item() == first.val_metric.item()
    assert "LP: reusing" in out
