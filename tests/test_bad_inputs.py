"""The catalogue of bad inputs: one table for every stage.

Each case builds one bad input (a malformed file, a wrong flag, a hostile name) in a copy of a
workspace whose outputs came from a good run, runs the stage, and must get: exit 2, a single
`error:` line that names the file or flag (warnings may precede it), no traceback, and every file
under the test's folder byte-identical afterwards (nothing written to the outputs or anywhere else).
Cases are grouped by class; `test_catalogue_covers_every_class` keeps the classes filled.
"""
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from load_models import model_loader
from tests import dataset_trees
from tests.conftest import snapshot
from tests.helpers import make_duo_logits, write_set

S1, S2, S3, S3DY, S4, S5, S8 = ("evaluate/1_single_model_prediction.py", "evaluate/2_temp_scale.py",
                                "evaluate/3_duo_temp_scale.py", "evaluate/3dy_duo_temp_scale.py",
                                "evaluate/4_evaluate_predictions.py", "evaluate/5_evaluate_duo_predictions.py",
                                "evaluate/8_evaluate_deep_ensemble.py")
HP, SOUP, PIPE, S9 = "train/hp_tune.py", "train/make_soup.py", "evaluate/run_pipeline.py", "evaluate/9_make_report.py"
CLASSES = ("prediction file", "table", "config", "flag", "file system", "path safety", "checkpoint and data")
CATALOGUE: dict = {}


def case(klass: str, name: str):
    """Register `build(ws) -> (argv, expected text of the error line)` under `klass`."""
    assert klass in CLASSES and name not in CATALOGUE, name

    def register(build):
        CATALOGUE[name] = (klass, build)
        return build
    return register


class Workspace:
    """A copy of the good workspace plus helpers that write one bad input each under bad/."""

    def __init__(self, root: Path, shared: Path):
        self.root, self.shared = root, shared
        self.preds, self.cal, self.out = root / "predictions", root / "calibrated", root / "results"
        self.large, self.small = self.preds / "large.npz", self.preds / "small.npz"
        self.duos = root / "duos.csv"
        self.bad = root / "bad"
        self.bad.mkdir(exist_ok=True)

    def variant(self, name: str, edit=None, model: str = "small", suffix: str = ".npz", frame_edit=None) -> Path:
        """The model's prediction file with `edit` applied to its splits (and `frame_edit` to its CSV)."""
        folder = self.bad / name
        folder.mkdir(parents=True)
        other = self.small if model == "large" else self.large
        shutil.copy(other, folder)               # its partner, so the folder holds a whole duo
        pset = make_duo_logits(num_classes=6, seed=3)[model]
        if edit:
            edit(pset)
        path = write_set(pset, folder, suffix)
        if frame_edit:
            frame = pd.read_csv(path, dtype={"sample_id": str}, keep_default_na=False)
            frame_edit(frame)
            frame.to_csv(path, index=False)
        return path

    def npz(self, name: str, model: str = "small", **changes) -> Path:
        """The model's NPZ with some arrays replaced (None removes one)."""
        with np.load(self.preds / f"{model}.npz") as archive:
            arrays = {key: archive[key] for key in archive.files}
        for key, value in changes.items():
            if value is None:
                arrays.pop(key)
            else:
                arrays[key] = value
        path = self.bad / name / f"{model}.npz"
        path.parent.mkdir(parents=True)
        np.savez(path, **arrays)
        return path

    def text(self, name: str, content, folder: str = "") -> Path:
        path = self.bad / folder / name if folder else self.bad / name
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
        return path

    def cal_dir(self, name: str, single: str | None = None, duo: str | None = None) -> Path:
        folder = self.bad / name
        folder.mkdir(parents=True)
        if single is not None:
            (folder / "temperature_single_model.csv").write_text(single)
        if duo is not None:
            (folder / "temperature_duo.csv").write_text(duo)
        return folder

    def fit(self, path):
        return [S2, "--predictions", path, "--output_dir", self.cal]

    def pair(self, small, large=None):
        return [S3, "--large_model_pred", large or self.large, "--small_model_pred", small, "--output_dir", self.cal]

    def evaluate(self, predictions=None, calibrated=None, *extra):
        return [S4, "--predictions_dir", predictions or self.preds, "--output_dir", self.out,
                "--calibrated_dir", calibrated or self.cal, *extra]

    def duo(self, config=None, calibrated=None, predictions=None, *extra):
        return [S5, "--config", config or self.duos, "--predictions_dir", predictions or self.preds,
                "--output_dir", self.out, "--calibrated_dir", calibrated or self.cal, *extra]

    def mnist(self):
        return ["--dataset", "mnist5k", "--output_dir", self.root / "s1out", "--num_workers", 0]

    def caltech(self):
        return ["--dataset", "caltech256", "--data_dir", self.shared / "data", "--output_dir", self.root / "s1out",
                "--num_workers", 0, "--batch_size", 8, "--device", "cpu"]

    def hp(self, *extra, model="resnet10t"):
        return [HP, "--model", model, "--dataset", "mnist5k", "--weights", "none", "--output_dir", self.root / "hp",
                *extra]

    def pipeline(self, content: str):
        return [PIPE, "--config", self.text("pipeline.yaml", content), "--output_root", self.root / "run"]


GOOD_PIPELINE = "dataset: mnist5k\nlarge: resnet18\nsidekicks: [resnet10t]\nstages: [temp_scale]\n"


def _split_edit(split, **values):
    def edit(pset):
        for attribute, value in values.items():
            setattr(pset.splits[split], attribute, value(pset.splits[split]) if callable(value) else value)
    return edit


# ----------------------------------------------------------------------------- prediction files

@case("prediction file", "missing prediction file")
def _(ws):
    return ws.fit(ws.preds / "nope.npz"), "nope.npz: prediction file not found"


@case("prediction file", "corrupt npz")
def _(ws):
    return ws.fit(ws.text("corrupt.npz", b"PK\x03\x04 garbage")), "corrupt.npz: cannot read NPZ"


@case("prediction file", "text file named .npz")
def _(ws):
    # numpy calls this 'pickled data' and advises unpickling it; the message must not repeat that advice
    return ws.fit(ws.text("text.npz", "x\n")), "text.npz: cannot read NPZ (not an NPZ archive of arrays"


@case("prediction file", "non-numeric csv cell")
def _(ws):
    path = ws.variant("text", suffix=".csv", frame_edit=lambda f: f.__setitem__(
        "2", f["2"].astype(object).where(f.index != 4, "x1")))
    return ws.fit(path), "non-numeric value 'x1' in column '2' at data row 5"


@case("prediction file", "empty logit cell in csv")
def _(ws):
    path = ws.variant("blank", suffix=".csv", frame_edit=lambda f: f.__setitem__(
        "1", f["1"].astype(object).where(f.index != 2, "")))
    return ws.fit(path), "non-numeric value '' in column '1' at data row 3"


@case("prediction file", "True/False logit cells")
def _(ws):
    path = ws.variant("bools", suffix=".csv", frame_edit=lambda f: f.__setitem__("0", f.index % 2 == 0))
    return ws.fit(path), "non-numeric value True in column '0'"


@case("prediction file", "NaN logits")
def _(ws):
    return ws.fit(ws.variant("nan", _split_edit("val", logits=lambda s: np.where(np.arange(len(s))[:, None] < 2,
                                                                                  np.nan, s.logits)))), \
        "NaN or inf logits in 2 of"


@case("prediction file", "inf logits in test")
def _(ws):
    def edit(pset):
        pset.splits["test"].logits[[1, 4, 9], 2] = np.inf
    return ws.duo(None, None, ws.variant("inf", edit).parent), "split 'test' has NaN or inf logits in 3 of"


@case("prediction file", "complex logits")
def _(ws):
    logits = np.load(ws.small)["logits_val"].astype(np.complex64) + 1j
    return ws.fit(ws.npz("complex", logits_val=logits)), "logits are complex numbers"


@case("prediction file", "text logits in npz")
def _(ws):
    logits = np.load(ws.small)["logits_val"].astype(str)
    logits[0, 0] = "high"
    return ws.fit(ws.npz("strlogits", logits_val=logits)), "logits are text"


@case("prediction file", "structured logits in npz")
def _(ws):
    logits = np.zeros(300, dtype=[("a", "f4"), ("b", "f4")])
    return ws.fit(ws.npz("structured", logits_val=logits)), "records"


@case("prediction file", "one logit column")
def _(ws):
    return ws.fit(ws.npz("onecol", logits_val=np.zeros((300, 1), np.float32), labels_val=np.zeros(300, np.int64))), \
        "1 logit column(s)"


@case("prediction file", "label out of range")
def _(ws):
    return ws.fit(ws.variant("label", _split_edit("val", labels=lambda s: np.r_[-1, s.labels[1:]]))), \
        "1 labels outside [0, 6)"


@case("prediction file", "fractional labels")
def _(ws):
    labels = np.load(ws.small)["labels_val"].astype(np.float64)
    labels[3] = 2.5
    return ws.fit(ws.npz("fraclabel", labels_val=labels)), "labels must be whole numbers"


@case("prediction file", "duplicate ids")
def _(ws):
    return ws.fit(ws.variant("dup", _split_edit("val", ids=lambda s: np.r_[s.ids[:1], s.ids[:-1]]))), \
        "1 duplicate sample ids"


@case("prediction file", "NaN ids in npz")
def _(ws):
    ids = np.arange(300, dtype=np.float64)
    ids[7] = np.nan
    return ws.fit(ws.npz("nanids", ids_val=ids)), "1 NaN or inf sample ids"


@case("prediction file", "empty-string ids in npz")
def _(ws):
    ids = np.load(ws.small)["ids_val"].copy()
    ids[[2, 5]] = ""
    return ws.fit(ws.npz("blankids", ids_val=ids)), "2 empty sample ids"


@case("prediction file", "empty id cell in csv")
def _(ws):
    path = ws.variant("blankcsvid", suffix=".csv", frame_edit=lambda f: f.__setitem__(
        "sample_id", f["sample_id"].where(f.index != 0, "")))
    return ws.fit(path), "1 empty sample ids"


@case("prediction file", "0-d ids")
def _(ws):
    return ws.fit(ws.npz("zerodim", ids_val=np.array(5))), "needs one sample id per row (300), got shape ()"


@case("prediction file", "meta is a list")
def _(ws):
    return ws.fit(ws.npz("metalist", meta=np.array(json.dumps(["dataset", "x"])))), "'meta' must be a JSON object"


@case("prediction file", "meta is null")
def _(ws):
    return ws.fit(ws.npz("metanull", meta=np.array("null"))), "'meta' must be a JSON object"


@case("prediction file", "logits without labels")
def _(ws):
    return ws.fit(ws.npz("nolabels", labels_val=None)), "has logits_val but no labels_val"


@case("prediction file", "no val split")
def _(ws):
    return ws.fit(ws.variant("noval", lambda p: p.splits.pop("val"))), "no 'val' split"


@case("prediction file", "no test split")
def _(ws):
    return ws.evaluate(ws.variant("notest", lambda p: p.splits.pop("test")).parent, None, "--fit_missing"), \
        "no 'test' split"


@case("prediction file", "empty split")
def _(ws):
    return ws.fit(ws.npz("emptysplit", logits_val=np.zeros((0, 6), np.float32), labels_val=np.zeros(0, np.int64),
                         ids_val=np.zeros(0, np.int64))), "split 'val' is empty"


@case("prediction file", "header-only prediction csv")
def _(ws):
    return ws.fit(ws.text("small.csv", "split,sample_id,label,0,1\n", "headeronly")), "no data rows"


@case("prediction file", "zero-byte prediction csv")
def _(ws):
    return ws.fit(ws.text("small.csv", "", "zerobyte")), "is an empty file"


@case("prediction file", "unknown split name")
def _(ws):
    path = ws.variant("split", suffix=".csv", frame_edit=lambda f: f.__setitem__(
        "split", f["split"].replace("ood_test", "ood")))
    return ws.fit(path), "unknown split 'ood'"


@case("prediction file", "val split predicted perfectly")
def _(ws):
    def edit(pset):
        pset.splits["val"].labels = np.argmax(pset.splits["val"].logits, axis=1)
    return ws.fit(ws.variant("separable", edit)), "the validation NLL keeps falling as T -> 0"


@case("prediction file", "duo that predicts val perfectly")
def _(ws):
    def edit(pset):
        pset.splits["val"].labels = np.argmax(make_duo_logits(num_classes=6, seed=3)["large"].splits["val"].logits, 1)
    small = ws.variant("separable_duo", edit)
    large = ws.variant("separable_duo_large", edit, model="large")
    return ws.pair(small, large), "a weight grows"


@case("prediction file", "duo whose large model alone predicts val perfectly")
def _(ws):
    def edit(pset):
        pset.splits["val"].labels = np.argmax(make_duo_logits(num_classes=6, seed=3)["large"].splits["val"].logits, 1)
    large = ws.variant("separated_by_large", edit, model="large")
    small = ws.variant("separated_by_large_small", edit)
    return ws.pair(small, large), "the duo's combined logits predict every 'val' sample correctly"


def _features_case(ws, name, **changes):
    """3dy on the workspace's duo with one features file edited (`changes`: array name -> value or None)."""
    folder = ws.bad / name
    folder.mkdir()
    for model in ("large", "small"):
        shutil.copy(ws.preds / f"{model}.npz", folder)
        pset = make_duo_logits(num_classes=6, seed=3)[model]
        arrays = {}
        for split, data in pset.splits.items():
            arrays[f"features_{split}"] = np.random.default_rng(0).normal(size=(len(data), 5)).astype(np.float32)
            arrays[f"ids_{split}"] = data.ids
        if model == "small":
            for key, value in changes.items():
                arrays.pop(key) if value is None else arrays.__setitem__(key, value(arrays[key]))
        np.savez(folder / f"{model}.features.npz", **arrays)
    return [S3DY, "--large_model_pred", folder / "large.npz", "--small_model_pred", folder / "small.npz",
            "--output_dir", ws.out, "--calibrated_dir", ws.cal, "--optimizer", "adam", "--num_epochs", 1]


@case("prediction file", "features without ids")
def _(ws):
    return _features_case(ws, "f_noids", ids_test=None), "no 'ids_test'"


@case("prediction file", "features with fewer rows than ids")
def _(ws):
    return _features_case(ws, "f_short", features_test=lambda a: a[:-10]), "needs one sample id per row (390)"


@case("prediction file", "features with NaN")
def _(ws):
    return _features_case(ws, "f_nan", features_val=lambda a: np.where(a > 1, np.nan, a)), "with NaN or inf"


@case("prediction file", "features as text")
def _(ws):
    return _features_case(ws, "f_text", features_val=lambda a: a.astype(str)), "features are text"


@case("prediction file", "different class counts")
def _(ws):
    return ws.pair(ws.variant("k", lambda p: [setattr(s, "logits", np.hstack([s.logits, s.logits[:, :1]]))
                                              for s in p.splits.values()])), "has 7"


@case("prediction file", "ids differ as sets")
def _(ws):
    return ws.pair(ws.variant("ids", _split_edit("val", ids=lambda s: np.r_[["zzz"], s.ids[1:]]))), \
        "1 only in the second, e.g. 'zzz' (text)"


@case("prediction file", "labels disagree")
def _(ws):
    return ws.pair(ws.variant("lab", _split_edit("val", labels=lambda s: np.r_[(s.labels[0] + 1) % 6, s.labels[1:]]))), \
        "disagree on the label of 1"


@case("prediction file", "features file given as a prediction file")
def _(ws):
    return ws.fit(ws.text("large.features.npz", b"x")), "only features files given"


# ----------------------------------------------------------------------------- tables (CSV)

@case("table", "duos CSV without model columns")
def _(ws):
    return ws.duo(ws.text("nocols.csv", "large,small\nlarge,small\n")), "model_large"


@case("table", "duos CSV with no usable pair")
def _(ws):
    return [S3, "--config", ws.text("ghosts.csv", "model_large,model_small\ng1,g2\n"), "--predictions_dir", ws.preds,
            "--output_dir", ws.cal], "none of the duos"


@case("table", "duos CSV header only")
def _(ws):
    return ws.duo(ws.text("header.csv", "model_large,model_small\n")), "duos CSV has no rows"


@case("table", "duos CSV zero bytes")
def _(ws):
    return ws.duo(ws.text("zero.csv", "")), "zero.csv: the duos CSV is an empty file"


@case("table", "duos CSV binary")
def _(ws):
    return ws.duo(ws.text("binary.csv", bytes(range(256)) * 4)), "binary.csv: cannot parse the duos CSV"


@case("table", "duos CSV ragged")
def _(ws):
    return ws.duo(ws.text("ragged.csv", "model_large,model_small\nlarge,small\nlarge,small,x,y\n")), \
        "ragged.csv: cannot parse the duos CSV"


@case("table", "duo of a model with itself")
def _(ws):
    return ws.duo(ws.text("self.csv", "model_large,model_small\nlarge,LARGE\n")), "pairs large with itself"


@case("table", "non-numeric gflops")
def _(ws):
    return ws.duo(ws.text("gf.csv", "model_large,model_small,gflops_large\nlarge,small,big\n")), "'big'"


@case("table", "non-positive temperature")
def _(ws):
    return ws.evaluate(None, ws.cal_dir("c0", "full_name,temperature\nlarge,-1\nsmall,1\n")), \
        "temperature must be > 0, got -1 for large"


@case("table", "tiny temperature overflows the logits")
def _(ws):
    return ws.evaluate(None, ws.cal_dir("ctiny", "full_name,temperature\nlarge,1e-305\nsmall,1\n")), \
        "beyond float64's range"


@case("table", "non-numeric temperature")
def _(ws):
    return ws.evaluate(None, ws.cal_dir("c1", "full_name,temperature\nlarge,hot\nsmall,1\n")), "'hot'"


@case("table", "missing temperature")
def _(ws):
    return ws.evaluate(None, ws.cal_dir("c2", "full_name,temperature\nlarge,1.5\n")), "2_temp_scale.py"


@case("table", "two rows for one model")
def _(ws):
    return ws.evaluate(None, ws.cal_dir("cdup", "full_name,temperature\nlarge,1.5\nsmall,1\nLarge,2\n")), \
        "two rows for model Large"


@case("table", "temperature CSV zero bytes")
def _(ws):
    return ws.evaluate(None, ws.cal_dir("czero", "")), "temperature_single_model.csv: the temperature CSV is an empty"


@case("table", "negative duo weight")
def _(ws):
    return ws.duo(None, ws.cal_dir("c3", "full_name,temperature\nlarge,1\nsmall,1\n",
                                   "model_large,model_small,temperature_large,temperature_small,weight_large,weight_small\n"
                                   "large,small,1,1,0.5,-0.5\n")), "negative duo weight"


@case("table", "infinite duo weight")
def _(ws):
    return ws.duo(None, ws.cal_dir("cwinf", "full_name,temperature\nlarge,1\nsmall,1\n",
                                   "model_large,model_small,temperature_large,temperature_small,weight_large,weight_small\n"
                                   "large,small,1,1,inf,0.5\n")), "must be finite"


@case("table", "huge duo weight")
def _(ws):
    return ws.duo(None, ws.cal_dir("cwbig", "full_name,temperature\nlarge,1\nsmall,1\n",
                                   "model_large,model_small,temperature_large,temperature_small,weight_large,weight_small\n"
                                   "large,small,5e-309,1,1e308,0.5\n")), "beyond float64's range"


@case("table", "two rows for one duo")
def _(ws):
    return ws.duo(None, ws.cal_dir("cduodup", "full_name,temperature\nlarge,1\nsmall,1\n",
                                   "model_large,model_small,temperature_large,temperature_small\n"
                                   "large,small,1,2\nLARGE,Small,1.5,2\n")), "two rows for duo"


@case("table", "zero gflops")
def _(ws):
    return ws.duo(ws.text("gf0.csv", "model_large,model_small,gflops_large,gflops_small\nlarge,small,0,-1\n")), \
        "gflops_large must be a finite number > 0"


@case("table", "infinite gflops balance")
def _(ws):
    return ws.duo(ws.text("gfinf.csv", "model_large,model_small,gflops_balance\nlarge,small,inf\n")), \
        "gflops_balance must be a finite number > 0"


@case("table", "missing duo weights")
def _(ws):
    return ws.duo(None, ws.cal_dir("c4", "full_name,temperature\nlarge,1\nsmall,1\n")), "3_duo_temp_scale.py"


@case("table", "existing temperature CSV is binary")
def _(ws):
    (ws.cal / "temperature_single_model.csv").write_bytes(b"\xff\xfe\x00garbage\x00\x81" * 50)
    return ws.fit(ws.small), "temperature_single_model.csv: cannot parse the existing table"


@case("table", "existing temperature CSV is ragged")
def _(ws):
    path = ws.cal / "temperature_duo.csv"
    path.write_text(path.read_text() + "large,small,1,2,3,4,5,6,7,8,9,10,11,12,13\n")
    return ws.pair(ws.small), "it was left as it is"


@case("table", "first data row has an extra field")
def _(ws):
    return ws.evaluate(None, ws.cal_dir("cshift", "full_name,temperature\nlarge,1.5,7\nsmall,1\n")), \
        "a row of the temperature CSV has more fields than its header"


@case("table", "duos CSV row without a sidekick")
def _(ws):
    return ws.duo(ws.text("half.csv", "model_large,model_small\nlarge,small\nlarge,\n")), \
        "data row 2 lacks model_large or model_small"


@case("table", "temperature row without a name")
def _(ws):
    return ws.evaluate(None, ws.cal_dir("cnoname", "full_name,temperature\nlarge,1.5\nsmall,1\n,2\n")), \
        "data row 3 has no model name"


@case("table", "existing results CSV lacks its key columns")
def _(ws):
    (ws.out / "evaluation_duo_synthetic.csv").write_text("a,b\n1,2\n")
    return ws.duo(), "lacks column(s) ['model_large'"


@case("table", "existing temperature CSV with its value column renamed")
def _(ws):
    path = ws.cal / "temperature_single_model.csv"
    header, rest = path.read_text().split("\n", 1)
    path.write_text(header.replace("temperature", "T", 1) + "\n" + rest)
    return ws.fit(ws.large), "lacks column(s) ['temperature']"


@case("table", "existing duo temperature CSV with a value column renamed")
def _(ws):
    path = ws.cal / "temperature_duo.csv"
    header, rest = path.read_text().split("\n", 1)
    path.write_text(header.replace("temperature_large", "T_large") + "\n" + rest)
    return ws.pair(ws.small), "lacks column(s) ['temperature_large']"


@case("table", "existing hyper-parameter CSV is corrupt")
def _(ws):
    ws.text("optimal_hyperparams_ff.csv", "model,val_metric\nresnet18,0.5\nresnet10t,0.5,extra,fields\n",
            "../hp/mnist5k")
    return ws.hp(), "optimal_hyperparams_ff.csv: cannot parse the existing table"


@case("table", "soup trials CSV without checkpoint column")
def _(ws):
    ws.text("m_trials.csv", "trial,lr,val_metric\n0,0.1,0.5\n", "../soupck/mnist5k/soup")
    return [SOUP, "--model", "m", "--dataset", "mnist5k", "--output_dir", ws.root / "soupck"], "['checkpoint']"


@case("table", "soup trials CSV empty")
def _(ws):
    ws.text("m_trials.csv", "", "../soupck/mnist5k/soup")
    return [SOUP, "--model", "m", "--dataset", "mnist5k", "--output_dir", ws.root / "soupck"], \
        "the soup trials CSV is an empty file"


@case("table", "soup trials CSV header only")
def _(ws):
    ws.text("m_trials.csv", "trial,checkpoint,val_metric\n", "../soupck/mnist5k/soup")
    return [SOUP, "--model", "m", "--dataset", "mnist5k", "--output_dir", ws.root / "soupck"], "no trials listed"


@case("table", "soup trial checkpoint missing")
def _(ws):
    ws.text("m_trials.csv", f"trial,checkpoint,val_metric\n0,{ws.root / 'gone.pth'},0.5\n", "../soupck/mnist5k/soup")
    return [SOUP, "--model", "m", "--dataset", "mnist5k", "--output_dir", ws.root / "soupck"], \
        "trial checkpoint(s) missing"


@case("table", "results file without a metric column")
def _(ws):
    path = ws.out / "evaluation_duo_synthetic.csv"
    pd.read_csv(path, keep_default_na=False).drop(columns="NLL").to_csv(path, index=False)
    return [S9, "--results_dir", ws.out, "--calibrated_dir", ws.cal], "lacks column(s) ['NLL']"


@case("table", "results file that is binary")
def _(ws):
    (ws.out / "evaluation_duo_synthetic.csv").write_bytes(bytes(range(256)) * 3)
    return [S9, "--results_dir", ws.out, "--calibrated_dir", ws.cal], "cannot parse the results file"


@case("table", "results row with an empty key")
def _(ws):
    path = ws.out / "evaluation_single_model_synthetic.csv"
    path.write_text(path.read_text().replace(",None,", ",,", 1))
    return ws.evaluate(), "has an empty model, wrapper, uncertainty_type, split cell"


@case("table", "report over two datasets")
def _(ws):
    for path in list(ws.out.glob("evaluation_*_synthetic*.csv")):
        shutil.copy(path, path.with_name(path.name.replace("synthetic", "other")))
    return [S9, "--results_dir", ws.out, "--calibrated_dir", ws.cal], "pass --dataset NAME"


@case("table", "report without the large model's temperature")
def _(ws):
    lines = (ws.cal / "temperature_single_model.csv").read_text().splitlines(keepends=True)
    without_large = "".join(line for line in lines if not line.startswith("large,"))     # small's own row is kept
    return [S9, "--results_dir", ws.out, "--calibrated_dir", ws.cal_dir("c_nolarge", without_large,
                                                                         (ws.cal / "temperature_duo.csv").read_text()),
            "--predictions_dir", ws.preds], "no temperature for large"


@case("table", "official ensembles: two files for one size")
def _(ws):
    folder = ws.bad / "y-prediction" / "caltech256" / "test" / "deep_ensemble"
    folder.mkdir(parents=True)
    pd.DataFrame({"target": [0, 1, 2, 1]}).to_csv(folder.parent / "point_prediction.csv", index=False)
    for name in ("ResNet50_2.csv", "ResNet50_02.csv"):
        pd.DataFrame(np.eye(4, 3)).to_csv(folder / name, index=False, header=False)
    return [S8, "--dataset_name", "caltech256", "--prediction_dir", folder, "--save_dir", ws.out], \
        "are both the m=2 ensemble of ResNet50"


@case("table", "soup trial of another class count")
def _(ws):
    ws.text("m_trials.csv", f"trial,checkpoint,val_metric\n0,{ws.shared / 'ck' / 'resnet10t.pth'},0.5\n"
                            f"1,{ws.shared / 'ck' / 'resnet10t_4.pth'},0.4\n", "../soupck/mnist5k/soup")
    return [SOUP, "--model", "m", "--dataset", "mnist5k", "--output_dir", ws.root / "soupck", "--num_workers", 0], \
        "resnet10t_4.pth: not an ingredient of this soup"


@case("table", "soup trial with an infinite val_metric")
def _(ws):
    ws.text("m_trials.csv", f"trial,checkpoint,val_metric\n0,{ws.shared / 'ck' / 'resnet10t.pth'},inf\n",
            "../soupck/mnist5k/soup")
    return [SOUP, "--model", "m", "--dataset", "mnist5k", "--output_dir", ws.root / "soupck"], "no finite val_metric"


@case("table", "backbone CSV without model_name")
def _(ws):
    return ws.evaluate(None, None, "--backbone_csv", ws.text("bb.csv", "name,GFLOPS\nx,1\n")), "lacks column 'model_name'"


# ----------------------------------------------------------------------------- configs (YAML)

@case("config", "dataset YAML unknown key")
def _(ws):
    return [S1, "--model_path", ws.shared / "ck" / "resnet10t.pth", *ws.mnist(), "--config",
            ws.text("unknown.yaml", "data:\n  rot: x\n")], "unknown key 'data.rot'"


@case("config", "dataset YAML wrong type")
def _(ws):
    return [S1, "--model_path", ws.shared / "ck" / "resnet10t.pth", *ws.mnist(), "--config",
            ws.text("type.yaml", "training:\n  batch_size: big\n")], "'training.batch_size' must be a whole number"


@case("config", "dataset YAML zero count")
def _(ws):
    return ws.hp("--config", ws.text("zero.yaml", "search:\n  num_samples: 0\n")), "'search.num_samples' must be >= 1"


@case("config", "dataset YAML bad range")
def _(ws):
    return ws.hp("--config", ws.text("hp.yaml", "search:\n  ff_lr: [1]\n")), "'search.ff_lr' must be a list of 2"


@case("config", "dataset YAML syntax error")
def _(ws):
    return ws.hp("--config", ws.text("syntax.yaml", "training: {batch_size: 3\n")), "syntax.yaml: invalid YAML"


@case("config", "dataset YAML is a list")
def _(ws):
    return ws.hp("--config", ws.text("list.yaml", "- data\n- training\n")), "the file must be a mapping"


@case("config", "pipeline YAML syntax error")
def _(ws):
    return ws.pipeline("dataset: mnist5k\nlarge: [resnet18\n"), "pipeline.yaml: invalid YAML"


@case("config", "pipeline YAML is a list")
def _(ws):
    return ws.pipeline("- dataset\n- large\n"), "the file must be a mapping"


@case("config", "pipeline YAML is a string")
def _(ws):
    return ws.pipeline("just some text\n"), "the file must be a mapping"


@case("config", "pipeline sidekicks as a string")
def _(ws):
    return ws.pipeline(GOOD_PIPELINE.replace("[resnet10t]", "resnet10t")), "'sidekicks' must be a list"


@case("config", "pipeline unknown key")
def _(ws):
    return ws.pipeline(GOOD_PIPELINE.replace("sidekicks:", "sidekick:")), "unknown key 'sidekick'"


@case("config", "pipeline unknown dataset")
def _(ws):
    return ws.pipeline(GOOD_PIPELINE.replace("mnist5k", "cifar10")), "'dataset' must be one of"


@case("config", "pipeline ensemble_seeds not a number")
def _(ws):
    return ws.pipeline(GOOD_PIPELINE + "ensemble_seeds: two\n"), "'ensemble_seeds' must be a whole number"


@case("config", "pipeline train is a list")
def _(ws):
    return ws.pipeline(GOOD_PIPELINE + "train: [1, 2]\n"), "'train' must be a mapping"


@case("config", "pipeline unknown stage")
def _(ws):
    return ws.pipeline(GOOD_PIPELINE.replace("[temp_scale]", "[temp_scale, calibrate]")), "'stages' must be one of"


@case("config", "dataset YAML key given twice")
def _(ws):
    return ws.hp("--config", ws.text("twice.yaml", "training:\n  batch_size: 8\n  batch_size: 16\n")), \
        "['batch_size'] given twice"


@case("config", "pipeline key given twice")
def _(ws):
    return ws.pipeline(GOOD_PIPELINE + "large: resnet10t\n"), "['large'] given twice"


@case("config", "pipeline sidekick listed twice")
def _(ws):
    return ws.pipeline(GOOD_PIPELINE.replace("[resnet10t]", "[resnet10t, ResNet10t]")), "listed twice"


@case("config", "pipeline ensemble sizes beyond its members")
def _(ws):
    return ws.pipeline(GOOD_PIPELINE.replace("[temp_scale]", "[temp_scale, deep_ensemble]")
                       + "ensemble_seeds: 1\ndeep_ensemble: {sizes: [2, 5]}\n"), "'deep_ensemble.sizes' [5] exceed"


@case("config", "pipeline duos CSV missing")
def _(ws):
    return ws.pipeline(GOOD_PIPELINE + "duos_csv: no_such_duos.csv\n"), "duos_csv: no_such_duos.csv not found"


@case("config", "pipeline missing large")
def _(ws):
    return ws.pipeline("dataset: mnist5k\n"), "missing key 'large'"


@case("config", "pipeline unknown ivon flag")
def _(ws):
    return ws.pipeline(GOOD_PIPELINE + "ivon: {epochz: 3}\n"), "unknown key 'ivon.epochz'"


# ----------------------------------------------------------------------------- flags

@case("flag", "unknown method")
def _(ws):
    return [S2, "--predictions", ws.large, "--method", "newton"], "--method"


@case("flag", "no source given")
def _(ws):
    return [S2, "--output_dir", ws.cal], "--predictions"


@case("flag", "unknown --models")
def _(ws):
    return [S2, "--predictions_dir", ws.preds, "--models", "ghost", "--output_dir", ws.cal], "ghost"


@case("flag", "half a pair")
def _(ws):
    return [S3, "--large_model_pred", ws.large, "--output_dir", ws.cal], "--small_model_pred"


@case("flag", "pair and config")
def _(ws):
    return [S3, "--large_model_pred", ws.large, "--small_model_pred", ws.small, "--config", ws.duos], "--config"


@case("flag", "a duo of one file with itself")
def _(ws):
    return ws.pair(ws.large), "the same model"


@case("flag", "two files of one model")
def _(ws):
    csv = ws.variant("both", suffix=".csv")
    return [S2, "--predictions", ws.small, csv, "--output_dir", ws.cal], "are both model 'small'"


@case("flag", "one file given twice")
def _(ws):
    return [S2, "--predictions", ws.small, ws.preds / "small.npz", "--output_dir", ws.cal], "are the same file"


@case("flag", "a symlink to another member")
def _(ws):
    (ws.bad / "links").mkdir()
    (ws.bad / "links" / "large_s9.npz").symlink_to(ws.large)
    return [S8, "--members", ws.large, ws.small, ws.bad / "links" / "large_s9.npz", "--sizes", 2, "--output_dir",
            ws.out], "are the same file"


@case("flag", "report --output is a folder")
def _(ws):
    return [S9, "--results_dir", ws.out, "--calibrated_dir", ws.cal, "--output", ws.out], "is a folder"


@case("flag", "report radar range empty")
def _(ws):
    return [S9, "--results_dir", ws.out, "--calibrated_dir", ws.cal, "--balance", 0.3, 0.1], "the range [0.3, 0.1] is empty"


@case("flag", "report --base without results")
def _(ws):
    return [S9, "--results_dir", ws.out, "--calibrated_dir", ws.cal, "--base", "ResNet50"], \
        "--base: ResNet50 has no single-model results"


@case("table", "ensemble members CSV without model_name")
def _(ws):
    return [S8, "--members_csv", ws.text("members.csv", "name\nlarge\n"), "--predictions_dir", ws.preds,
            "--output_dir", ws.out], "lacks column 'model_name'"


@case("flag", "report --output over a results CSV")
def _(ws):
    return [S9, "--results_dir", ws.out, "--calibrated_dir", ws.cal, "--output",
            ws.out / "evaluation_duo_synthetic.csv"], "is not a .md file"


@case("table", "results cell that is not a number")
def _(ws):
    path = ws.out / "evaluation_duo_synthetic.csv"
    frame = pd.read_csv(path, keep_default_na=False, dtype=str)
    frame.loc[2, "gflops_small"] = "abc"
    frame.to_csv(path, index=False)
    return [S9, "--results_dir", ws.out, "--calibrated_dir", ws.cal], "data row 3, column gflops_small: 'abc' is not a number"


@case("table", "results row repeated")
def _(ws):
    path = ws.out / "evaluation_single_model_synthetic.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines + lines[1:2]) + "\n")
    return [S9, "--results_dir", ws.out, "--calibrated_dir", ws.cal], "repeats the key"


@case("path safety", "results sidekick name with a path")
def _(ws):
    path = ws.out / "evaluation_duo_synthetic.csv"
    path.write_text(path.read_text().replace(",small,", ",../../small,"))
    return [S9, "--results_dir", ws.out, "--calibrated_dir", ws.cal], "model_small: '../../small' is not a plain name"


@case("flag", "report --table1_sidekicks unknown")
def _(ws):
    return [S9, "--results_dir", ws.out, "--calibrated_dir", ws.cal, "--base", "large", "--table1_sidekicks", "nosuch"], \
        "not paired with large in the duo results (its sidekicks: small)"


@case("path safety", "ensemble members CSV naming a path")
def _(ws):
    return [S8, "--members_csv", ws.text("members_path.csv", f"model_name\nlarge\n{ws.preds / 'small.npz'}\n"),
            "--predictions_dir", ws.preds, "--output_dir", ws.out], "is not a plain name"


@case("flag", "ivon --test_samples repeated")
def _(ws):
    return ["train/ivon_train.py", "--model", "resnet10t", "--dataset", "mnist5k", "--predict_only", "--test_samples",
            2, 2, "--output_dir", ws.root / "iv"], "names a sample count twice"


@case("config", "pipeline ivon mc_samples empty")
def _(ws):
    return ws.pipeline(GOOD_PIPELINE + "ivon: {mc_samples: []}\n"), "'ivon.mc_samples' must list distinct sample counts"


@case("table", "bootstrap interval reversed")
def _(ws):
    (ws.out / "evaluation_duo_delta_synthetic.csv").write_text(
        "delta,ci_low,ci_high,significant,B,seed,model_large,model_small,mode,uncertainty_type,gflops_large,gflops_small,"
        "gflops_balance,split,metric\n-0.1,0.2,-0.3,True,1000,0,large,small,asymmetric,softmax_response,10,1,0.1,test,NLL\n")
    return [S9, "--results_dir", ws.out, "--calibrated_dir", ws.cal], "data row 1 has ci_low above ci_high"


@case("flag", "unknown flag")
def _(ws):
    return [S5, "--confg", ws.duos], "--confg"


@case("flag", "unknown mode")
def _(ws):
    return ws.duo(None, None, None, "--modes", "ours"), "--modes"


@case("flag", "strict with a missing file")
def _(ws):
    return ws.duo(ws.text("strict.csv", "model_large,model_small\nlarge,ghost\n"), None, None, "--strict"), "ghost"


@case("flag", "ensemble size too large")
def _(ws):
    return [S8, "--members", ws.large, ws.small, "--sizes", 3, "--output_dir", ws.out], "--sizes"


@case("flag", "ensemble member twice")
def _(ws):
    return [S8, "--members", ws.large, ws.large, "--output_dir", ws.out], "are the same file"


@case("flag", "ensemble zero subsets")
def _(ws):
    return [S8, "--members", ws.large, ws.small, "--subsets", 0, "--output_dir", ws.out], "--subsets"


@case("flag", "ensemble negative seed")
def _(ws):
    return [S8, "--members", ws.large, ws.small, "--seed", -1, "--output_dir", ws.out], "--seed"


@case("flag", "ensemble member ids differ")
def _(ws):
    other = ws.variant("de_ids", _split_edit("test", ids=lambda s: np.r_[s.ids[:2], ["q"], s.ids[3:]]))
    return [S8, "--members", ws.large, other, "--sizes", 2, "--output_dir", ws.out], "differ"


@case("flag", "hp_tune zero samples")
def _(ws):
    return ws.hp("--num_samples", 0), "--num_samples"


@case("flag", "hp_tune negative samples")
def _(ws):
    return ws.hp("--num_samples", -1), "--num_samples"


@case("flag", "hp_tune zero fine-tuning epochs")
def _(ws):
    return ws.hp("--epochs_ff", 0), "--epochs_ff"


@case("flag", "hp_tune zero linear-probe samples")
def _(ws):
    return ws.hp("--lp_samples", 0), "--lp_samples"


@case("flag", "stage 1 unknown dataset")
def _(ws):
    return [S1, "--model_path", ws.shared / "ck" / "resnet10t.pth", "--dataset", "cifar"], "invalid choice: 'cifar'"


@case("flag", "stage 1 zero batch size")
def _(ws):
    return [S1, "--model_path", ws.shared / "ck" / "resnet10t.pth", *ws.mnist(), "--batch_size", 0], "--batch_size"


@case("flag", "3dy zero epochs")
def _(ws):
    return [S3DY, "--large_model_pred", ws.large, "--small_model_pred", ws.small, "--num_epochs", 0], "--num_epochs"


# ----------------------------------------------------------------------------- the file system

@case("file system", "missing predictions folder")
def _(ws):
    return [S2, "--predictions_dir", ws.root / "nowhere", "--output_dir", ws.cal], "nowhere"


@case("file system", "empty predictions folder")
def _(ws):
    (ws.bad / "empty_dir").mkdir()
    return [S2, "--predictions_dir", ws.bad / "empty_dir", "--output_dir", ws.cal], "no prediction files"


@case("file system", "explicit backbone CSV missing")
def _(ws):
    return ws.evaluate(None, None, "--backbone_csv", ws.root / "nobackbones.csv"), "nobackbones.csv"


@case("file system", "duos CSV is a folder")
def _(ws):
    (ws.bad / "duos_dir.csv").mkdir()
    return ws.duo(ws.bad / "duos_dir.csv"), "duos_dir.csv: is a folder"


@case("file system", "temperature CSV is a folder")
def _(ws):
    folder = ws.bad / "cal_dirs"
    (folder / "temperature_single_model.csv").mkdir(parents=True)
    return ws.evaluate(None, folder), "temperature_single_model.csv: is a folder"


@case("file system", "duo temperature CSV is a folder")
def _(ws):
    folder = ws.cal_dir("cal_duo_dir", "full_name,temperature\nlarge,1\nsmall,1\n")
    (folder / "temperature_duo.csv").mkdir()
    return ws.duo(None, folder), "temperature_duo.csv: is a folder"


@case("file system", "prediction file is a folder")
def _(ws):
    (ws.bad / "x" / "small.csv").mkdir(parents=True)
    return ws.fit(ws.bad / "x" / "small.csv"), "small.csv: is a folder"


@case("file system", "official point_prediction.csv is a folder")
def _(ws):
    root = ws.bad / "y-prediction" / "caltech256"
    (root / "val" / "raw").mkdir(parents=True)
    pd.DataFrame(np.zeros((4, 3))).to_csv(root / "val" / "raw" / "m.csv", index=False)
    (root / "val" / "point_prediction.csv").mkdir()
    return [S2, "--predictions", root / "val" / "raw" / "m.csv", "--output_dir", ws.cal], \
        "point_prediction.csv: is a folder"


@case("file system", "official point_prediction.csv missing")
def _(ws):
    root = ws.bad / "y-prediction" / "caltech256"
    (root / "val" / "raw").mkdir(parents=True)
    pd.DataFrame(np.zeros((4, 3))).to_csv(root / "val" / "raw" / "m.csv", index=False)
    return [S2, "--predictions", root / "val" / "raw" / "m.csv", "--output_dir", ws.cal], \
        "point_prediction.csv: labels file of the official layout (column 'target') not found"


@case("file system", "output folder under a regular file")
def _(ws):
    blocker = ws.text("blocker", "a file")
    return [S2, "--predictions", ws.small, "--output_dir", blocker / "calibrated"], "a file of that name is in the way"


@case("file system", "output folder is a file")
def _(ws):
    return [S4, "--predictions_dir", ws.preds, "--output_dir", ws.text("results_file", "x"), "--calibrated_dir",
            ws.cal], "results_file"


@case("file system", "output folder is the predictions folder")
def _(ws):
    return [S2, "--predictions_dir", ws.preds, "--output_dir", ws.preds], "is the predictions folder"


@case("file system", "calibrated folder is the predictions folder")
def _(ws):
    return ws.duo(None, ws.preds), "--calibrated_dir"


@case("file system", "results folder is a member's folder")
def _(ws):
    return [S8, "--members", ws.large, ws.small, "--output_dir", ws.preds], "is the predictions folder"


@case("file system", "lock file is a folder")
def _(ws):
    (ws.cal / ".temperature_single_model.csv.lock").unlink()
    (ws.cal / ".temperature_single_model.csv.lock").mkdir()
    return ws.fit(ws.small), ".temperature_single_model.csv.lock: is a folder"


# ----------------------------------------------------------------------------- names that become paths

@case("path safety", "duos CSV name with ../")
def _(ws):
    return ws.duo(ws.text("evil.csv", "model_large,model_small\nlarge,../outside/small\n")), \
        "'../outside/small' is not a plain name"


@case("path safety", "duos CSV absolute name")
def _(ws):
    return ws.duo(ws.text("abs.csv", f"model_large,model_small\n{ws.preds / 'large'},small\n")), "is not a plain name"


@case("path safety", "meta.dataset with ../ (stage 4)")
def _(ws):
    pset = make_duo_logits(num_classes=6, seed=3)["large"]
    pset.meta["dataset"] = "x/../../somewhere"
    folder = ws.bad / "traversal4"
    write_set(pset, folder)
    return ws.evaluate(folder, None), "'x/../../somewhere' is not a plain name"


@case("path safety", "meta.dataset with ../ (stage 5)")
def _(ws):
    sets = make_duo_logits(num_classes=6, seed=3)
    folder = ws.bad / "traversal5"
    for pset in sets.values():
        pset.meta["dataset"] = "../../escaped"
        write_set(pset, folder)
    return ws.duo(None, None, folder), "'../../escaped' is not a plain name"


@case("path safety", "meta.dataset not a name")
def _(ws):
    return ws.fit(ws.npz("metanum", meta=np.array(json.dumps({"dataset": ["a", "b"]})))), "meta.dataset must be a name"


@case("path safety", "meta.dataset with a newline")
def _(ws):
    sets = make_duo_logits(num_classes=6, seed=3)
    folder = ws.bad / "newline"
    for pset in sets.values():
        path = write_set(pset, folder)
        with np.load(path) as archive:
            arrays = {key: archive[key] for key in archive.files}
        arrays["meta"] = np.array(json.dumps({**json.loads(str(arrays["meta"])), "dataset": "syn\nthetic"}))
        np.savez(path, **arrays)
    return ws.evaluate(folder, None, "--fit_missing"), "no control characters"


@case("path safety", "--dataset with a separator")
def _(ws):
    return ws.evaluate(None, None, "--dataset", "a/b"), "--dataset: 'a/b' is not a plain name"


@case("path safety", "--save_name with ../")
def _(ws):
    return ws.hp("--save_name", "../../up"), "--save_name: '../../up' is not a plain name"


@case("path safety", "--members name with ../")
def _(ws):
    return [S8, "--members", "large", "..", "--predictions_dir", ws.preds, "--output_dir", ws.out], \
        "--members: '..' is not a plain name"


@case("path safety", "pipeline model name with ../")
def _(ws):
    return ws.pipeline(GOOD_PIPELINE.replace("[resnet10t]", "['../x']")), "'../x' is not a plain name"


# ----------------------------------------------------------------------------- checkpoints and data (stage 1, training)

@case("checkpoint and data", "missing checkpoint")
def _(ws):
    return [S1, "--model_path", ws.shared / "ck" / "nope.pth", *ws.mnist()], "nope.pth"


@case("checkpoint and data", "corrupt checkpoint")
def _(ws):
    return [S1, "--model_path", ws.shared / "ck" / "garbage.pth", *ws.mnist()], "garbage.pth: cannot read checkpoint"


@case("checkpoint and data", "checkpoint is a folder")
def _(ws):
    (ws.bad / "folder.pth").mkdir()
    return [S1, "--model_path", ws.bad / "folder.pth", *ws.mnist()], "folder.pth: is a folder"


@case("checkpoint and data", "checkpoint of another architecture")
def _(ws):
    return [S1, "--model_path", ws.shared / "ck" / "resnet10t.pth", "--model", "ResNet50", *ws.caltech()], \
        "checkpoint is for resnet10t, not ResNet50"


@case("checkpoint and data", "checkpoint with another class count")
def _(ws):
    return [S1, "--model_path", ws.shared / "ck" / "resnet10t.pth", *ws.caltech()], \
        "checkpoint has 10 classes but the dataset has 4"


@case("checkpoint and data", "missing dataset root")
def _(ws):
    return [S1, "--model_path", ws.shared / "ck" / "resnet10t.pth", "--dataset", "caltech256", "--data_dir",
            ws.root / "nodata", "--output_dir", ws.root / "s1out"], "does not exist"


@case("checkpoint and data", "pretrained weights not staged")
def _(ws):
    root, v2 = ws.shared / "imagenet_data" / "imagenet", ws.shared / "imagenet_data" / "imagenetv2"
    return [S1, "--dataset", "imagenet", "--model", "ShuffleNet_V2_X0_5", "--data_dir", root, "--ood_dir", v2,
            "--output_dir", ws.root / "s1out"], "shufflenetv2_x0.5-f707e7126e.pth"


@case("checkpoint and data", "corrupt --weights file")
def _(ws):
    return [HP, "--model", "resnet10t", "--dataset", "mnist5k", "--weights", ws.text("weights.pth", b"\x80\x04junk"),
            "--output_dir", ws.root / "hp"], "weights.pth: cannot read it as a plain state_dict"


@case("checkpoint and data", "hp_tune unknown model")
def _(ws):
    return ws.hp(model="no_such_net"), "no_such_net"


@case("checkpoint and data", "hp_tune missing data")
def _(ws):
    return [HP, "--model", "resnet10t", "--dataset", "caltech256", "--data_dir", ws.root / "nodata", "--weights",
            "none", "--output_dir", ws.root / "hp"], "nodata"


@case("checkpoint and data", "hp_tune weights not staged")
def _(ws):
    return [HP, "--model", "resnet10t", "--dataset", "mnist5k", "--output_dir", ws.root / "hp"], "not staged"


@case("checkpoint and data", "make_soup without a search")
def _(ws):
    return [SOUP, "--model", "resnet10t", "--dataset", "mnist5k", "--output_dir", ws.root / "hp"], \
        "resnet10t_trials.csv"


# ----------------------------------------------------------------------------- running the table

@pytest.fixture(scope="module")
def good_workspace(tmp_path_factory):
    """predictions/, calibrated/ and results/ from a good run of stages 2, 3, 4 and 5, a duos CSV; the
    read-only inputs (checkpoints, image folders) are shared by every case."""
    import importlib
    base = tmp_path_factory.mktemp("catalogue")
    root, shared = base / "ws", base / "shared"
    preds, cal, out = root / "predictions", root / "calibrated", root / "results"
    for pset in make_duo_logits(num_classes=6, seed=3).values():
        write_set(pset, preds)
    (root / "duos.csv").write_text("model_large,model_small,gflops_large,gflops_small\nlarge,small,10,1\n")
    for script, args in ((S2, ["--predictions_dir", preds, "--output_dir", cal]),
                         (S3, ["--config", root / "duos.csv", "--predictions_dir", preds, "--output_dir", cal]),
                         (S4, ["--predictions_dir", preds, "--output_dir", out, "--calibrated_dir", cal]),
                         (S5, ["--config", root / "duos.csv", "--predictions_dir", preds, "--output_dir", out,
                               "--calibrated_dir", cal])):
        assert importlib.import_module(script[:-3].replace("/", ".")).main([str(a) for a in args]) == 0
    model = model_loader.get_model_with_head("resnet10t", 10, source="timm", weights="none")
    model_loader.save_checkpoint(shared / "ck" / "resnet10t.pth", model, model_name="resnet10t", source="timm",
                                 num_classes=10, image_size=16)
    (shared / "ck" / "garbage.pth").write_bytes(b"not a torch file")
    four = model_loader.get_model_with_head("resnet10t", 4, source="timm", weights="none")
    model_loader.save_checkpoint(shared / "ck" / "resnet10t_4.pth", four, model_name="resnet10t", source="timm",
                                 num_classes=4, image_size=16)
    dataset_trees.make_caltech256(shared / "data")
    dataset_trees.make_imagenet(shared / "imagenet_data")
    from load_data.datasets import load_dataset  # the split files a first use caches beside the data
    load_dataset("caltech256", shared / "data")
    load_dataset("imagenet", shared / "imagenet_data" / "imagenet", ood_root=shared / "imagenet_data" / "imagenetv2")
    return root, shared


def test_catalogue_covers_every_class():
    counts = Counter(klass for klass, _ in CATALOGUE.values())
    assert set(counts) == set(CLASSES) and min(counts.values()) >= 7, counts
    assert len(CATALOGUE) >= 120, len(CATALOGUE)


@pytest.mark.parametrize("name", list(CATALOGUE))
def test_bad_input(good_workspace, stage, name, tmp_path, monkeypatch):
    root, shared = good_workspace
    shutil.copytree(root, tmp_path / "ws")
    ws = Workspace(tmp_path / "ws", shared)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")                 # a stage's default ./outputs would land here, watched
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    (script, *args), expected = CATALOGUE[name][1](ws)
    before = snapshot(tmp_path, shared)
    code, stdout, err = stage(script, *args)
    assert code == 2, (code, stdout, err)
    lines = err.strip().splitlines()
    assert "Traceback" not in err, err
    assert lines and lines[-1].startswith("error: ") and all(line.startswith("warning: ") for line in lines[:-1]), err
    assert expected in lines[-1], lines[-1]
    assert snapshot(tmp_path, shared) == before
