"""Outputs that commit together: every stage that writes several files is made to fail at each of its writes in
turn (the k-th temporary file, then the k-th rename) and must leave every file byte-identical; generated files
never replace a file the pipeline did not write."""
import errno
import shutil

import pandas as pd
import pytest

from tests.conftest import snapshot
from tests.helpers import make_duo_logits, write_features, write_set
from utils.files import safe_io

S2, S3, S3DY, S4, S5, S7, S8, S9 = ("evaluate/2_temp_scale.py", "evaluate/3_duo_temp_scale.py",
                                    "evaluate/3dy_duo_temp_scale.py", "evaluate/4_evaluate_predictions.py",
                                    "evaluate/5_evaluate_duo_predictions.py", "evaluate/7_evaluate_cascades.py",
                                    "evaluate/8_evaluate_deep_ensemble.py", "evaluate/9_make_report.py")
PIPE = "evaluate/run_pipeline.py"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """predictions (with features) of a model, its soup and a sidekick; calibrated/ and results/ of a good run, so
    that every stage below replaces existing files as well as writing new ones."""
    import importlib
    root = tmp_path_factory.mktemp("commit")
    preds = root / "predictions"
    sets = make_duo_logits(num_classes=4, seed=5, models=("ResNet50", "ResNet50_greedy", "small"),
                           quality=(2.5, 2.4, 1.2), scale=(3.0, 3.0, 1.5))
    for pset in sets.values():
        write_set(pset, preds)
        write_features(pset, preds / f"{pset.model}.features.npz")
    # ResNet50's cost from configs/backbones.csv, as stage 4's rows have it
    (root / "duos.csv").write_text("model_large,model_small,gflops_large,gflops_small\nResNet50,small,,1\n")
    run = lambda script, *args: importlib.import_module(script[:-3].replace("/", ".")).main([str(a) for a in args])  # noqa: E731
    folders = ["--predictions_dir", preds, "--calibrated_dir", root / "calibrated", "--output_dir", root / "results"]
    assert run(S2, "--predictions_dir", preds, "--models", "ResNet50", "small", "--output_dir", root / "calibrated") == 0
    assert run(S4, *folders, "--models", "ResNet50", "small") == 0
    assert run(S5, "--config", root / "duos.csv", *folders, "--modes", "unweighted") == 0
    return root


def runs(root):
    """Each multi-file run: its command line, on a workspace where it writes (new) and replaces (existing) files."""
    preds, cal, out = root / "predictions", root / "calibrated", root / "results"
    folders = ["--predictions_dir", preds, "--calibrated_dir", cal, "--output_dir", out]
    duos = root / "duos.csv"
    return {
        # fitted temperatures, then results (test, ood) and intervals (test, ood)
        "stage 4": [S4, *folders, "--fit_missing", "--bootstrap", "100"],
        "stage 5": [S5, "--config", duos, *folders, "--fit_missing", "--bootstrap", "100"],
        "stage 7": [S7, "--config", duos, *folders, "--fit_missing"],
        "stage 8": [S8, "--members", preds / "ResNet50.npz", preds / "ResNet50_greedy.npz", "--sizes", "1", "2",
                    "--output_dir", out, "--bootstrap", "100", "--name", "ResNet50", "--base", "ResNet50",
                    "--predictions_dir", preds],
        "stage 3dy": [S3DY, "--config", duos, *folders],
        "stage 9": [S9, "--results_dir", out, "--calibrated_dir", cal, "--predictions_dir", preds],
        "make_duos": ["configs/make_duos.py", "--output_dir", root / "configs"],
    }


class Failure:
    """Make the k-th call of a file-system step fail (a full disk), counting the calls."""

    def __init__(self, real, at: int | None):
        self.real, self.at, self.calls = real, at, 0

    def __call__(self, *args):
        self.calls += 1
        if self.calls == self.at:
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        return self.real(*args)


def count_steps(monkeypatch, stage, root, name) -> tuple[int, int]:
    writes, renames = Failure(safe_io._write_temporary, None), Failure(safe_io._replace, None)
    monkeypatch.setattr(safe_io, "_write_temporary", writes)
    monkeypatch.setattr(safe_io, "_replace", renames)
    script, *args = runs(root)[name]
    code, _, err = stage(script, *args)
    assert code == 0, err
    monkeypatch.undo()
    return writes.calls, renames.calls


def unlocked(state: dict) -> dict:
    """A snapshot without the hidden lock files a commit may create (empty, shared by every job)."""
    return {path: data for path, data in state.items() if not path.endswith(".lock")}


@pytest.mark.parametrize("name", ["stage 4", "stage 5", "stage 7", "stage 8", "stage 3dy", "stage 9", "make_duos"])
def test_a_failure_at_any_write_leaves_every_file_as_it_was(workspace, tmp_path, stage, monkeypatch, name):
    clean = tmp_path / "clean"
    shutil.copytree(workspace, clean)
    writes, renames = count_steps(monkeypatch, stage, clean, name)
    assert writes >= 2 and renames == writes, (writes, renames)          # a multi-file run, every file renamed
    for step, total in (("_write_temporary", writes), ("_replace", renames)):
        # the first, second, a middle, the next-to-last and the last call: one commit routine serves every stage,
        # so these places stand for the rest (every k took 68 s for stage 9, which writes the report and its figures)
        for k in sorted({1, 2, total // 2 + 1, total - 1, total}):
            root = tmp_path / f"{step}{k}"
            shutil.copytree(workspace, root)
            before = unlocked(snapshot(root))
            monkeypatch.setattr(safe_io, step, Failure(getattr(safe_io, step), k))
            script, *args = runs(root)[name]
            code, _, err = stage(script, *args)
            monkeypatch.undo()
            assert code == 2 and err.strip().splitlines()[-1].startswith("error: "), (step, k, err)
            assert "No space left on device" in err
            assert unlocked(snapshot(root)) == before, (name, step, k)
            shutil.rmtree(root)


def test_stage1_commits_a_models_prediction_and_features_files_together(tmp_path, stage, monkeypatch):
    from load_data.datasets import load_dataset
    from load_models import model_loader
    from tests import dataset_trees
    dataset_trees.make_caltech256(tmp_path / "data")
    load_dataset("caltech256", tmp_path / "data")             # the split file a first use saves beside the data
    model = model_loader.get_model_with_head("resnet10t", 4, source="timm", weights="none")
    model_loader.save_checkpoint(tmp_path / "ck" / "resnet10t.pth", model, model_name="resnet10t", source="timm",
                                 num_classes=4, image_size=16)
    args = ["--model_path", tmp_path / "ck" / "resnet10t.pth", "--dataset", "caltech256", "--data_dir",
            tmp_path / "data", "--output_dir", tmp_path / "out", "--features", "--num_workers", 0, "--batch_size", 8]
    for k in (1, 2):
        monkeypatch.setattr(safe_io, "_replace", Failure(safe_io._replace, k))
        code, _, err = stage("evaluate/1_single_model_prediction.py", *args)
        monkeypatch.undo()
        assert code == 2 and "No space left on device" in err
        assert not list((tmp_path / "out").glob("*.npz")), k
    assert stage("evaluate/1_single_model_prediction.py", *args)[0] == 0
    assert sorted(p.name for p in (tmp_path / "out").glob("*.npz")) == ["resnet10t.features.npz", "resnet10t.npz"]


PIPELINE = "dataset: mnist5k\nlarge: resnet10t\nsidekicks: [mobilenetv3_small_050]\nweights: none\nimage_size: 28\n" \
           "stages: [train, predict, temp_scale, duo_temp_scale, evaluate, evaluate_duo, report]\n"


def test_print_slurm_writes_its_files_together_and_never_over_a_users_own(tmp_path, stage, monkeypatch):
    config = tmp_path / "pipeline.yaml"
    config.write_text(PIPELINE)
    root = tmp_path / "run"
    writes, renames = (Failure(safe_io._write_temporary, None), Failure(safe_io._replace, None))
    monkeypatch.setattr(safe_io, "_write_temporary", writes)
    monkeypatch.setattr(safe_io, "_replace", renames)
    assert stage(PIPE, "--config", config, "--output_root", root, "--print_slurm")[0] == 0
    monkeypatch.undo()
    written = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert written == [".generated.json", "backbones.csv", "duos.csv", "slurm/01_train_array.sh",
                       "slurm/02_after_training.sh", "slurm/submit.sh"]
    assert writes.calls == renames.calls == len(written)
    for k in range(1, renames.calls + 1):                    # rerun: each failure leaves the first run's files
        before = unlocked(snapshot(root))
        monkeypatch.setattr(safe_io, "_replace", Failure(safe_io._replace, k))
        config.write_text(PIPELINE.replace("mobilenetv3_small_050", "regnetx_002"))    # every file changes
        code, _, err = stage(PIPE, "--config", config, "--output_root", root, "--print_slurm")
        monkeypatch.undo()
        assert code == 2 and "No space left on device" in err
        assert unlocked(snapshot(root)) == before, k
    # a user's own duos.csv in the output folder is never overwritten, nor a generated file edited since
    own = tmp_path / "own"
    own.mkdir()
    (own / "duos.csv").write_text("model_large,model_small\nmine,yours\n")
    before = snapshot(own)
    code, _, err = stage(PIPE, "--config", config, "--output_root", own, "--print_slurm")
    assert code == 2 and "duos.csv: exists and run_pipeline did not write it" in err, err
    assert snapshot(own) == before
    script = root / "slurm" / "submit.sh"
    script.write_text(script.read_text() + "# my edit\n")
    code, _, err = stage(PIPE, "--config", config, "--output_root", root, "--print_slurm")
    assert code == 2 and "submit.sh: exists and was edited since run_pipeline wrote it" in err, err
    assert script.read_text().endswith("# my edit\n")


def test_outputs_refuse_a_target_that_is_an_input(tmp_path):
    source = tmp_path / "in.csv"
    source.write_text("a\n1\n")
    outputs = safe_io.Outputs([source])
    with pytest.raises(Exception, match="which this run reads"):
        outputs.write_text(tmp_path / "." / "in.csv", "x")
    assert source.read_text() == "a\n1\n"


def test_a_commit_rolls_back_new_and_replaced_files(tmp_path, monkeypatch):
    (tmp_path / "old.txt").write_text("old")
    outputs = safe_io.Outputs()
    outputs.write_text(tmp_path / "old.txt", "new")
    outputs.write_text(tmp_path / "sub" / "fresh.txt", "fresh")
    outputs.write_csv(tmp_path / "table.csv", pd.DataFrame({"a": [1]}))
    monkeypatch.setattr(safe_io, "_replace", Failure(safe_io._replace, 3))
    with pytest.raises(OSError):
        outputs.commit()
    monkeypatch.undo()
    assert (tmp_path / "old.txt").read_text() == "old" and not (tmp_path / "sub" / "fresh.txt").exists()
    assert not (tmp_path / "table.csv").exists()
    assert not [p for p in tmp_path.rglob(".*") if p.suffix in (".tmp", ".bak")]      # no temporaries left behind
