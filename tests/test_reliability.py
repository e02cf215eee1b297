"""Killed jobs, concurrent jobs and reproducibility."""
import multiprocessing as mp
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from tests.conftest import REPO
from tests.helpers import make_duo_logits, write_set
from utils.files import safe_io, tables
from utils.files.prediction_io import read_predictions

S2, S3, S5 = "evaluate/2_temp_scale.py", "evaluate/3_duo_temp_scale.py", "evaluate/5_evaluate_duo_predictions.py"


def run(script, *args, kill_at=None):
    wrapper = [str(REPO / "tests" / "kill_at.py"), kill_at] if kill_at else []
    return subprocess.run([sys.executable, *wrapper, str(REPO / script), *map(str, args)], capture_output=True,
                          text=True, timeout=300)


def all_files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
            and not p.name.endswith(".lock")}


def parse_every_file(folder):
    for path in folder.rglob("*.csv"):
        pd.read_csv(path)                       # a truncated CSV would raise or lose its header


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """The inputs (read-only for the tests) and one uninterrupted run of the stages, the reference."""
    tmp_path = tmp_path_factory.mktemp("reliability")
    sets = make_duo_logits(num_classes=5, models=("a_large", "b_small"), seed=11)
    sets.update(make_duo_logits(num_classes=5, models=("c_large", "d_small"), seed=11))
    for pset in sets.values():
        write_set(pset, tmp_path / "predictions")
    (tmp_path / "duos.csv").write_text("model_large,model_small\na_large,b_small\nc_large,d_small\na_large,d_small\n")
    assert pipeline(tmp_path, tmp_path / "reference") is None
    return tmp_path


def pipeline(root, out, kill_at=None):
    steps = [(S2, "--predictions_dir", root / "predictions", "--output_dir", out / "cal"),
             (S3, "--config", root / "duos.csv", "--predictions_dir", root / "predictions", "--output_dir", out / "cal"),
             (S5, "--config", root / "duos.csv", "--predictions_dir", root / "predictions", "--output_dir", out / "res",
              "--calibrated_dir", out / "cal", "--dataset", "d")]
    for script, *args in steps:
        result = run(script, *args, kill_at=kill_at)
        if result.returncode != 0:
            return result
    return None


# each stage is a process of its own: ":2" is the second file a stage writes (stage 5 writes the test,
# then the ood results); ":1" hits stage 2, the first stage to write
@pytest.mark.parametrize("kill_at", ["before_rename:1", "after_rename:1", "before_rename:2", "after_rename:2"])
def test_killed_stages_rerun_to_the_same_outputs(workspace, kill_at):
    reference = workspace / "reference"
    killed = workspace / f"killed_{kill_at.replace(':', '_')}"
    result = pipeline(workspace, killed, kill_at=kill_at)
    assert result is not None and result.returncode == -9          # SIGKILL
    parse_every_file(killed)                                        # nothing truncated under a final name
    assert not [p for p in killed.rglob("*.tmp")] or all(p.name.startswith(".") for p in killed.rglob("*.tmp"))
    assert pipeline(workspace, killed) is None                      # rerun without the kill
    for name in ("cal/temperature_single_model.csv", "cal/temperature_duo.csv", "res/evaluation_duo_d.csv",
                 "res/evaluation_duo_d_ood.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(killed / name), pd.read_csv(reference / name))


def _upsert_temperatures(folder, rows):
    """What stage 2 does with its rows: one Outputs, committed."""
    outputs = safe_io.Outputs()
    tables.queue_single_temperatures(outputs, folder, rows)
    outputs.commit()


def _single_writer(folder, worker):
    _upsert_temperatures(folder, [{"full_name": f"m{worker}_{i}", "temperature": 1 + worker + i / 10,
                                                "nll_before": 1, "nll_after": 0.5, "ece_before": 0.1,
                                                "ece_after": 0.05, "n_val": 10} for i in range(3)])
    _upsert_temperatures(folder, [{"full_name": "shared", "temperature": 2.0, "nll_before": 1,
                                                "nll_after": 0.5, "ece_before": 0.1, "ece_after": 0.05, "n_val": 10}])


def _hyper_writer(path, worker):
    with safe_io.locked_table(path, ["model"]) as table:
        table.upsert(pd.DataFrame([{"model": f"net{worker}", "val_metric": worker / 10}]))
    with safe_io.locked_table(path, ["model"]) as table:
        table.upsert(pd.DataFrame([{"model": "same", "val_metric": 0.5}]))


def test_eight_concurrent_writers_lose_nothing(tmp_path):
    ctx = mp.get_context("fork")
    jobs = [ctx.Process(target=_single_writer, args=(tmp_path, w)) for w in range(8)]
    jobs += [ctx.Process(target=_hyper_writer, args=(tmp_path / "optimal_hyperparams_ff.csv", w)) for w in range(8)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(120)
        assert job.exitcode == 0
    temps = pd.read_csv(tmp_path / "temperature_single_model.csv")
    assert len(temps) == 8 * 3 + 1 and temps.full_name.is_unique
    hyper = pd.read_csv(tmp_path / "optimal_hyperparams_ff.csv")
    assert sorted(hyper.model) == sorted([f"net{w}" for w in range(8)] + ["same"])


def test_stage_outputs_are_reproducible(workspace):
    first, second = workspace / "reference", workspace / "two"
    assert pipeline(workspace, second) is None
    assert all_files(first) == all_files(second)                   # byte-identical CSVs


def test_stage1_is_deterministic(tmp_path, stage):
    import torch

    from load_models import model_loader
    torch.manual_seed(0)
    model = model_loader.get_model_with_head("resnet10t", 10, source="timm", weights="none")
    ckpt = model_loader.save_checkpoint(tmp_path / "m.pth", model, model_name="resnet10t", source="timm",
                                        num_classes=10, image_size=16)
    outputs = []
    for name in ("a", "b"):
        assert stage("evaluate/1_single_model_prediction.py", "--model_path", ckpt, "--dataset", "mnist5k",
                     "--output_dir", tmp_path / name, "--num_workers", 0, "--device", "cpu")[0] == 0
        outputs.append(read_predictions(tmp_path / name / "m.npz"))
    for split in outputs[0].splits:
        a, b = outputs[0].splits[split], outputs[1].splits[split]
        assert a.logits.tobytes() == b.logits.tobytes() and np.array_equal(a.ids, b.ids)
