"""A shared cluster: unreadable and unwritable places, hostile names, tampered trial files, generated
shell, permissions of outputs, and the temporary files a killed job leaves."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from load_models import model_loader
from tests.conftest import REPO, snapshot
from tests.helpers import make_duo_logits, write_features, write_set
from train import tuning
from utils.cli.parsing import UserError
from utils.files import safe_io

S1, S2, S3DY, S4, S5 = ("evaluate/1_single_model_prediction.py", "evaluate/2_temp_scale.py",
                        "evaluate/3dy_duo_temp_scale.py", "evaluate/4_evaluate_predictions.py",
                        "evaluate/5_evaluate_duo_predictions.py")


# ----------------------------------------------------------------------------- permissions

def run_without_privileges(script: str, *args, cwd: Path) -> subprocess.CompletedProcess:
    """Run a stage as a user whom file modes bind: as root, without the capabilities that let root
    read and write past them (so chmod 000 / 555 mean what they say); otherwise as is."""
    prefix = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"] if os.geteuid() == 0 else []
    return subprocess.run([*prefix, sys.executable, str(REPO / script), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})


@pytest.fixture
def shared_folder(tmp_path):
    preds, cal = tmp_path / "predictions", tmp_path / "calibrated"
    for pset in make_duo_logits(num_classes=5).values():
        write_set(pset, preds)
    (tmp_path / "duos.csv").write_text("model_large,model_small\nlarge,small\n")
    import importlib
    two = importlib.import_module("evaluate.2_temp_scale")
    assert two.main(["--predictions_dir", str(preds), "--output_dir", str(cal)]) == 0
    model = model_loader.get_model_with_head("resnet10t", 10, source="timm", weights="none")
    model_loader.save_checkpoint(tmp_path / "ck" / "resnet10t.pth", model, model_name="resnet10t", source="timm",
                                 num_classes=10, image_size=16)
    return tmp_path


PERMISSION_CASES = {
    "unreadable prediction file": (lambda r: r / "predictions" / "small.npz", 0o000,
                                   lambda r: [S2, "--predictions", r / "predictions" / "small.npz", "--output_dir",
                                              r / "calibrated"], "permission denied reading the prediction file"),
    "unreadable duos CSV": (lambda r: r / "duos.csv", 0o000,
                            lambda r: [S5, "--config", r / "duos.csv", "--predictions_dir", r / "predictions",
                                       "--output_dir", r / "results", "--calibrated_dir", r / "calibrated"],
                            "duos.csv: permission denied reading the duos CSV"),
    "unreadable temperature CSV": (lambda r: r / "calibrated" / "temperature_single_model.csv", 0o000,
                                   lambda r: [S4, "--predictions_dir", r / "predictions", "--output_dir", r / "results",
                                              "--calibrated_dir", r / "calibrated"],
                                   "permission denied reading the temperature CSV"),
    "unreadable checkpoint": (lambda r: r / "ck" / "resnet10t.pth", 0o000,
                              lambda r: [S1, "--model_path", r / "ck" / "resnet10t.pth", "--dataset", "mnist5k",
                                         "--output_dir", r / "s1", "--num_workers", 0],
                              "permission denied reading the checkpoint"),
    "read-only output folder": (lambda r: r / "calibrated", 0o555,
                                lambda r: [S2, "--predictions_dir", r / "predictions", "--output_dir", r / "calibrated"],
                                "calibrated: permission denied writing there"),
    "output folder inside a read-only one": (lambda r: r / "locked", 0o555,
                                             lambda r: [S4, "--predictions_dir", r / "predictions", "--output_dir",
                                                        r / "locked" / "results", "--calibrated_dir", r / "calibrated"],
                                             "permission denied creating this output folder"),
}


@pytest.mark.parametrize("case", list(PERMISSION_CASES))
def test_permissions_are_one_line_errors(shared_folder, case):
    root = shared_folder
    (root / "locked").mkdir()
    target, mode, command, expected = PERMISSION_CASES[case]
    before = snapshot(root)
    original = target(root).stat().st_mode & 0o777
    target(root).chmod(mode)
    try:
        result = run_without_privileges(*command(root), cwd=root)
    finally:
        target(root).chmod(original)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert snapshot(root) == before


# ----------------------------------------------------------------------------- names that become paths

def test_hostile_recorded_names_write_nothing_outside(tmp_path, stage):
    """meta.model '../..' in both members of a dynamic duo: the files' own names are used, so every
    output stays under --output_dir and --calibrated_dir."""
    work = tmp_path / "work"
    sets = make_duo_logits(num_classes=4, sizes={"val": 60, "test": 50})
    for pset in sets.values():
        path = write_set(pset, work / "predictions")
        with np.load(path) as archive:
            arrays = {key: archive[key] for key in archive.files}
        arrays["meta"] = np.array(json.dumps({**json.loads(str(arrays["meta"])), "model": "../../escaped"}))
        np.savez(path, **arrays)
        write_features(pset, work / "predictions" / f"{pset.model}.features.npz")
    before = snapshot(tmp_path)
    code, _, err = stage(S3DY, "--large_model_pred", work / "predictions" / "large.npz", "--small_model_pred",
                         work / "predictions" / "small.npz", "--output_dir", work / "results", "--calibrated_dir",
                         work / "calibrated", "--optimizer", "adam", "--num_epochs", 2, "--dataset", "d")
    assert code == 0, err
    assert err.count("meta.model is '../../escaped'") == 2
    new = set(snapshot(tmp_path)) - set(before)
    assert new and all(Path(p).is_relative_to(work / "results") or Path(p).is_relative_to(work / "calibrated")
                       for p in new), new
    assert (work / "calibrated" / "dynamic_duo" / "large+small_concat_adam.pt").exists()


# ----------------------------------------------------------------------------- tampered trial checkpoints

class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_tampered_trial_state_does_not_run_code(tmp_path):
    marker = tmp_path / "code_ran"
    folder = tmp_path / "checkpoint_000001"
    folder.mkdir()
    torch.save({"epoch": 0, "best_metric": 0.5, "model": _Payload(marker)}, folder / "state.pt")
    with pytest.raises(UserError, match="state.pt: not a plain trial checkpoint, refused"):
        tuning.load_trial_state(folder)
    assert not marker.exists()
    torch.load(folder / "state.pt", weights_only=False)          # the unsafe load this guards against
    assert marker.exists()


def test_a_tampered_trial_is_listed_as_failed(tmp_path):
    """The search's results: a trial whose state.pt is refused is a failed trial, not a crash."""
    import contextlib

    class Checkpoint:
        def __init__(self, folder):
            self.folder = folder

        @contextlib.contextmanager
        def as_directory(self):
            yield str(self.folder)

    class Result:
        def __init__(self, folder, index):
            self.path, self.error, self.checkpoint = str(folder.parent), None, Checkpoint(folder)
            self.metrics, self.config = {"trial_id": f"abc_{index:05d}", "epoch": 1}, {"lr": 0.1}

    good, bad = tmp_path / "t0" / "checkpoint", tmp_path / "t1" / "checkpoint"
    good.mkdir(parents=True), bad.mkdir(parents=True)
    torch.save({"epoch": 0, "best_metric": 0.7, "best_is_current": True, "model": {"w": torch.ones(2)}},
               good / "state.pt")
    torch.save({"epoch": 0, "best_metric": 0.9, "model": _Payload(tmp_path / "ran")}, bad / "state.pt")
    done, failed = tuning.finished_trials([Result(good, 0), Result(bad, 1)])
    assert [t.best_metric for t in done] == [0.7] and len(failed) == 1 and "refused" in failed[0]
    assert not (tmp_path / "ran").exists()


# ----------------------------------------------------------------------------- generated shell

def test_generated_slurm_scripts_quote_hostile_paths(tmp_path, monkeypatch):
    """An output_root with a space and `$(...)` in it: submit.sh and the array job pass it as one
    argument and run no command from it."""
    monkeypatch.chdir(tmp_path)          # submit.sh makes logs/ in the folder --print_slurm ran from
    marker = tmp_path / "PWNED"
    root = tmp_path / f"my runs $(touch {marker})"
    config = tmp_path / "pipeline.yaml"
    config.write_text("dataset: mnist5k\nlarge: resnet18\nsidekicks: [resnet10t]\nimage_size: 32\nweights: none\n"
                      "source: timm\nstages: [train, temp_scale]\ntrain: {num_samples: 1}\n")
    from evaluate import run_pipeline
    assert run_pipeline.main(["--config", str(config), "--output_root", str(root), "--print_slurm"]) == 0
    slurm = root / "slurm"
    bin_dir = tmp_path / "bin"
    log = tmp_path / "calls.log"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f'#!/bin/bash\nprintf "%s\\n" "$@" >> {str(log)!r}\necho 4242\n')
    (bin_dir / "python").write_text(f'#!/bin/bash\nprintf "%s\\n" "$@" >> {str(log)!r}\n')
    for script in (bin_dir / "sbatch", bin_dir / "python"):
        script.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_SUBMIT_DIR": str(tmp_path),
           "SLURM_ARRAY_TASK_ID": "1", "DUOS_PYTHON": str(bin_dir / "python")}
    for script in ("submit.sh", "01_train_array.sh"):
        result = subprocess.run(["bash", str(slurm / script)], env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
    calls = log.read_text().splitlines()
    assert str(slurm / "01_train_array.sh") in calls and str(slurm / "02_after_training.sh") in calls
    assert "--dependency=afterany:4242" in calls
    assert str(root / "checkpoints") in calls                # hp_tune's --output_dir, as one argument
    assert not marker.exists()


# ----------------------------------------------------------------------------- outputs and temporaries

@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_stage_outputs_honour_the_umask(tmp_path, stage, umask, mode):
    path = write_set(make_duo_logits()["large"], tmp_path / "p")
    old = os.umask(umask)
    try:
        assert stage(S2, "--predictions", path, "--output_dir", tmp_path / "cal")[0] == 0
        assert stage(S4, "--predictions_dir", tmp_path / "p", "--output_dir", tmp_path / "res", "--calibrated_dir",
                     tmp_path / "cal")[0] == 0
    finally:
        os.umask(old)
    written = [p for p in (tmp_path / "cal").iterdir()] + [p for p in (tmp_path / "res").iterdir()]
    assert {p.stat().st_mode & 0o777 for p in written if not p.name.endswith(".lock")} == {mode}


def test_stale_temporaries_of_killed_writes_are_swept(tmp_path, stage):
    path = write_set(make_duo_logits()["large"], tmp_path / "p")
    cal = tmp_path / "cal"
    cal.mkdir()
    stale = cal / ".temperature_single_model.csv.k3j_x9a2.tmp"
    fresh = cal / ".temperature_single_model.csv.ab12cd34.tmp"       # a concurrent job's write in progress
    foreign = [cal / "notes.tmp", cal / ".notes.tmp", cal / ".x.ABCDEFGH.tmp"]
    for file in [stale, fresh, *foreign]:
        file.write_text("partial")
    old = time.time() - 2 * safe_io.STALE_TMP_SECONDS
    for file in [stale, *foreign]:
        os.utime(file, (old, old))
    assert stage(S2, "--predictions", path, "--output_dir", cal)[0] == 0
    assert not stale.exists() and fresh.exists() and all(file.exists() for file in foreign)
    assert pd.read_csv(cal / "temperature_single_model.csv").full_name.tolist() == ["large"]


def test_a_killed_write_leaves_only_a_swept_temporary(tmp_path):
    """A write killed between writing and renaming leaves `.<name>.<random>.tmp`; the target is untouched."""
    code = ("import os, sys; from utils.files import safe_io\n"
            "with safe_io.atomic_path(sys.argv[1]) as tmp:\n"
            "    tmp.write_text('half')\n"
            "    os._exit(9)\n")
    target = tmp_path / "out.csv"
    target.write_text("good\n")
    assert subprocess.run([sys.executable, "-c", code, str(target)], cwd=REPO).returncode == 9
    leftovers = [p for p in tmp_path.iterdir() if p != target]
    assert len(leftovers) == 1 and safe_io._TMP_PATTERN.match(leftovers[0].name) and target.read_text() == "good\n"
    old = time.time() - 2 * safe_io.STALE_TMP_SECONDS
    os.utime(leftovers[0], (old, old))
    safe_io.write_text(tmp_path / "other.csv", "x\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.csv", "out.csv"]
