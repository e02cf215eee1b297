"""A catalogue of bad inputs across the stages: each must exit non-zero with a one-line
`error: ...` naming the file or flag, and leave every output folder exactly as it was."""
import importlib
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from load_models import model_loader
from tests.conftest import snapshot
from tests.helpers import make_duo_logits, write_set

S1, S2, S3, S4, S5, S8 = ("evaluate/1_single_model_prediction.py", "evaluate/2_temp_scale.py",
                          "evaluate/3_duo_temp_scale.py", "evaluate/4_evaluate_predictions.py",
                          "evaluate/5_evaluate_duo_predictions.py", "evaluate/8_evaluate_deep_ensemble.py")
HP, SOUP = "train/hp_tune.py", "train/make_soup.py"


def variant(root: Path, name: str, edit=None, model: str = "small", suffix: str = ".npz", frame_edit=None) -> Path:
    folder = root / "bad" / name
    folder.mkdir(parents=True)
    pset = make_duo_logits(num_classes=6, seed=3)[model]
    if edit:
        edit(pset)
    path = write_set(pset, folder, suffix)
    if frame_edit:
        frame = pd.read_csv(path, dtype={"sample_id": str})
        frame_edit(frame)
        frame.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("catalogue")
    preds, cal, out = root / "predictions", root / "calibrated", root / "results"
    sets = make_duo_logits(num_classes=6, seed=3)
    for pset in sets.values():
        write_set(pset, preds)
    (root / "duos.csv").write_text("model_large,model_small,gflops_large,gflops_small\nlarge,small,10,1\n")
    for script, args in ((S2, ["--predictions_dir", preds, "--output_dir", cal]),
                         (S3, ["--config", root / "duos.csv", "--predictions_dir", preds, "--output_dir", cal]),
                         (S5, ["--config", root / "duos.csv", "--predictions_dir", preds, "--output_dir", out,
                               "--calibrated_dir", cal])):
        assert importlib.import_module(script[:-3].replace("/", ".")).main([str(a) for a in args]) == 0
    model = model_loader.get_model_with_head("resnet10t", 10, source="timm", weights="none")
    model_loader.save_checkpoint(root / "ck" / "resnet10t.pth", model, model_name="resnet10t", source="timm",
                                 num_classes=10, image_size=16)
    (root / "ck" / "garbage.pth").write_bytes(b"not a torch file")
    return root


def build_cases(root: Path) -> dict:
    preds, cal, out = root / "predictions", root / "calibrated", root / "results"
    large = preds / "large.npz"

    def fit(path):
        return [S2, "--predictions", path, "--output_dir", cal]

    def pair(small, big=large):
        return [S3, "--large_model_pred", big, "--small_model_pred", small, "--output_dir", cal]

    def duo(config=root / "duos.csv", calibrated=cal, predictions=preds, *extra):
        return [S5, "--config", config, "--predictions_dir", predictions, "--output_dir", out,
                "--calibrated_dir", calibrated, *extra]

    def text(name, content):
        path = root / "bad" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        return path

    def cal_dir(name, single=None, duo_rows=None):
        folder = root / "bad" / name
        folder.mkdir(parents=True)
        if single is not None:
            (folder / "temperature_single_model.csv").write_text(single)
        if duo_rows is not None:
            (folder / "temperature_duo.csv").write_text(duo_rows)
        return folder

    corrupt = text("corrupt.npz", "PK\x03\x04 garbage")
    empty_dir = root / "bad" / "empty_dir"
    empty_dir.mkdir(parents=True)
    mnist = ["--dataset", "mnist5k", "--output_dir", root / "s1out", "--num_workers", 0]
    return {
        # stage 2
        "missing prediction file": (fit(preds / "nope.npz"), "nope.npz"),
        "corrupt npz": (fit(corrupt), "corrupt.npz"),
        "non-numeric csv cell": (fit(variant(root, "text", suffix=".csv", frame_edit=lambda f: f.__setitem__(
            "2", f["2"].astype(object).where(f.index != 4, "x1")))), "'x1'"),
        "nan logits": (fit(variant(root, "nan", lambda p: p.splits["val"].logits.__setitem__((slice(0, 2), 0), np.nan))),
                       "NaN or inf logits in 2 of"),
        "inf logits": (fit(variant(root, "inf", lambda p: p.splits["val"].logits.__setitem__((3, 1), np.inf))),
                       "NaN or inf logits in 1 of"),
        "label out of range": (fit(variant(root, "label", lambda p: p.splits["val"].labels.__setitem__(0, -1))),
                               "labels outside [0, 6)"),
        "duplicate ids": (fit(variant(root, "dup", lambda p: p.splits["val"].ids.__setitem__(1, p.splits["val"].ids[0]))),
                          "duplicate sample ids"),
        "no val split": (fit(variant(root, "noval", lambda p: p.splits.pop("val"))), "no 'val' split"),
        "unknown method": ([S2, "--predictions", large, "--method", "newton"], "--method"),
        "no source given": ([S2, "--output_dir", cal], "--predictions"),
        "missing predictions dir": ([S2, "--predictions_dir", root / "nowhere", "--output_dir", cal], "nowhere"),
        "empty predictions dir": ([S2, "--predictions_dir", empty_dir, "--output_dir", cal], "no prediction files"),
        "unknown --models": ([S2, "--predictions_dir", preds, "--models", "ghost", "--output_dir", cal], "ghost"),
        # stage 3
        "different K": (pair(variant(root, "k", lambda p: [setattr(s, "logits", np.hstack([s.logits, s.logits[:, :1]]))
                                                           for s in p.splits.values()])), "has 7"),
        "ids differ as sets": (pair(variant(root, "ids", lambda p: p.splits["val"].ids.__setitem__(0, "zzz"))),
                               "1 only in the first, 1 only in the second"),
        "labels disagree": (pair(variant(root, "lab", lambda p: p.splits["val"].labels.__setitem__(0, (p.splits["val"].labels[0] + 1) % 6))),
                            "disagree on the label of 1"),
        "half a pair": ([S3, "--large_model_pred", large, "--output_dir", cal], "--small_model_pred"),
        "pair and config": ([S3, "--large_model_pred", large, "--small_model_pred", large, "--config", root / "duos.csv"],
                            "--config"),
        "duos csv without model columns": (duo(text("nocols.csv", "large,small\nlarge,small\n")), "model_large"),
        "duos csv with no usable pair": ([S3, "--config", text("ghosts.csv", "model_large,model_small\ng1,g2\n"),
                                          "--predictions_dir", preds, "--output_dir", cal], "none of the duos"),
        "non-numeric gflops": (duo(text("gf.csv", "model_large,model_small,gflops_large\nlarge,small,big\n")), "'big'"),
        # stage 4
        "non-positive temperature": ([S4, "--predictions_dir", preds, "--output_dir", out, "--calibrated_dir",
                                      cal_dir("c0", "full_name,temperature\nlarge,-1\nsmall,1\n")], "must be > 0"),
        "non-numeric temperature": ([S4, "--predictions_dir", preds, "--output_dir", out, "--calibrated_dir",
                                     cal_dir("c1", "full_name,temperature\nlarge,hot\nsmall,1\n")], "'hot'"),
        "missing temperature": ([S4, "--predictions_dir", preds, "--output_dir", out, "--calibrated_dir",
                                 cal_dir("c2", "full_name,temperature\nlarge,1.5\n")], "2_temp_scale.py"),
        "no test split": ([S4, "--predictions_dir", variant(root, "notest", lambda p: p.splits.pop("test")).parent,
                           "--output_dir", out, "--calibrated_dir", cal, "--fit_missing"], "no 'test' split"),
        "explicit backbone csv missing": ([S4, "--predictions_dir", preds, "--output_dir", out, "--calibrated_dir", cal,
                                           "--backbone_csv", root / "nobackbones.csv"], "nobackbones.csv"),
        # stage 5
        "unknown mode": (duo(root / "duos.csv", cal, preds, "--modes", "ours"), "--modes"),
        "negative duo weight": (duo(root / "duos.csv", cal_dir("c3", "full_name,temperature\nlarge,1\nsmall,1\n",
                                    "model_large,model_small,temperature_large,temperature_small,weight_large,weight_small\n"
                                    "large,small,1,1,0.5,-0.5\n")), "negative duo weight"),
        "strict with missing file": (duo(text("strict.csv", "model_large,model_small\nlarge,ghost\n"), cal, preds,
                                         "--strict"), "ghost"),
        "missing duo weights": (duo(root / "duos.csv", cal_dir("c4", "full_name,temperature\nlarge,1\nsmall,1\n")),
                                "3_duo_temp_scale.py"),
        # stage 8
        "ensemble size too large": ([S8, "--members", large, preds / "small.npz", "--sizes", 3, "--output_dir", out],
                                    "--sizes"),
        "ensemble member twice": ([S8, "--members", large, large, "--output_dir", out], "twice"),
        "ensemble zero subsets": ([S8, "--members", large, preds / "small.npz", "--subsets", 0, "--output_dir", out],
                                  "--subsets"),
        "ensemble member ids differ": ([S8, "--members", large, variant(root, "de_ids", lambda p: p.splits["test"].ids.__setitem__(2, "q")),
                                        "--sizes", 2, "--output_dir", out], "differ"),
        # stage 1
        "stage 1 unknown dataset": ([S1, "--model_path", root / "ck" / "resnet10t.pth", "--dataset", "cifar"], "cifar"),
        "stage 1 missing checkpoint": ([S1, "--model_path", root / "ck" / "nope.pth", *mnist], "nope.pth"),
        "stage 1 corrupt checkpoint": ([S1, "--model_path", root / "ck" / "garbage.pth", *mnist], "garbage.pth"),
        "stage 1 yaml unknown key": ([S1, "--model_path", root / "ck" / "resnet10t.pth", *mnist, "--config",
                                      text("unknown.yaml", "data:\n  rot: x\n")], "data.rot"),
        "stage 1 yaml wrong type": ([S1, "--model_path", root / "ck" / "resnet10t.pth", *mnist, "--config",
                                     text("type.yaml", "training:\n  batch_size: big\n")], "training.batch_size"),
        "stage 1 missing dataset root": ([S1, "--model_path", root / "ck" / "resnet10t.pth", "--dataset", "caltech256",
                                          "--data_dir", root / "nodata", "--output_dir", root / "s1out"], "nodata"),
        # hp_tune and make_soup
        "hp_tune unknown model": ([HP, "--model", "no_such_net", "--dataset", "mnist5k", "--weights", "none",
                                   "--output_dir", root / "hp"], "no_such_net"),
        "hp_tune missing data": ([HP, "--model", "resnet10t", "--dataset", "caltech256", "--data_dir", root / "nodata",
                                  "--weights", "none", "--output_dir", root / "hp"], "nodata"),
        "hp_tune bad yaml": ([HP, "--model", "resnet10t", "--dataset", "mnist5k", "--weights", "none", "--config",
                              text("hp.yaml", "search:\n  ff_lr: [1]\n"), "--output_dir", root / "hp"], "search.ff_lr"),
        "hp_tune weights not staged": ([HP, "--model", "resnet10t", "--dataset", "mnist5k", "--output_dir", root / "hp"],
                                       "not staged"),
        "make_soup without trials": ([SOUP, "--model", "resnet10t", "--dataset", "mnist5k", "--output_dir", root / "hp"],
                                     "resnet10t_trials.csv"),
        "make_soup missing ingredient": ([SOUP, "--model", "m", "--dataset", "mnist5k", "--output_dir", root / "soupck"],
                                         "trial checkpoint(s) missing"),
    }


def _soup_fixture(root: Path) -> None:
    folder = root / "soupck" / "mnist5k" / "soup"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "m_trials.csv").write_text(f"trial,checkpoint,lr,weight_decay,val_metric,epochs_run\n"
                                         f"0,{root / 'soupck' / 'gone.pth'},0.1,0,0.5,1\n")


CASES = ["missing prediction file", "corrupt npz", "non-numeric csv cell", "nan logits", "inf logits",
         "label out of range", "duplicate ids", "no val split", "unknown method", "no source given",
         "missing predictions dir", "empty predictions dir", "unknown --models", "different K", "ids differ as sets",
         "labels disagree", "half a pair", "pair and config", "duos csv without model columns",
         "duos csv with no usable pair", "non-numeric gflops", "non-positive temperature", "non-numeric temperature",
         "missing temperature", "no test split", "explicit backbone csv missing", "unknown mode", "negative duo weight",
         "strict with missing file", "missing duo weights", "ensemble size too large", "ensemble member twice",
         "ensemble zero subsets", "ensemble member ids differ", "stage 1 unknown dataset", "stage 1 missing checkpoint",
         "stage 1 corrupt checkpoint", "stage 1 yaml unknown key", "stage 1 yaml wrong type",
         "stage 1 missing dataset root", "hp_tune unknown model", "hp_tune missing data", "hp_tune bad yaml",
         "hp_tune weights not staged", "make_soup without trials", "make_soup missing ingredient"]


def test_catalogue_is_large_enough():
    assert len(CASES) >= 30


@pytest.mark.parametrize("case", CASES)
def test_bad_input(workspace, stage, case, tmp_path, monkeypatch):
    root = tmp_path / "ws"
    shutil.copytree(workspace, root)
    _soup_fixture(root)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    (script, *args), expected = build_cases(root)[case]
    watched = [root / "predictions", root / "calibrated", root / "results", root / "s1out", root / "hp", root / "soupck"]
    before = snapshot(*watched)
    code, stdout, err = stage(script, *args)
    assert code not in (0, None), stdout
    lines = err.strip().splitlines()
    # exactly one error line, last; anything before it is a warning (e.g. a skipped duo)
    assert lines and lines[-1].startswith("error: ") and all(l.startswith("warning: ") for l in lines[:-1]), err
    assert expected in lines[-1], lines[-1]
    assert snapshot(*watched) == before
