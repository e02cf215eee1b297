"""One check per kind of input, called by every entry point that takes that input: each test iterates over the
entry points (stages, the pipeline YAML, make_duos, the report, the torch wrappers) with one bad input."""
import argparse
import importlib

import numpy as np
import pandas as pd
import pytest

from tests.conftest import snapshot
from tests.helpers import make_duo_logits, write_features, write_set
from utils.cli import parsing
from utils.files.prediction_io import PredictionSet, Split
from utils.maths import bootstrap

S2, S3, S3DY, S4, S5, S7, S8, S9 = ("evaluate/2_temp_scale.py", "evaluate/3_duo_temp_scale.py",
                                    "evaluate/3dy_duo_temp_scale.py", "evaluate/4_evaluate_predictions.py",
                                    "evaluate/5_evaluate_duo_predictions.py", "evaluate/7_evaluate_cascades.py",
                                    "evaluate/8_evaluate_deep_ensemble.py", "evaluate/9_make_report.py")
PIPE = "evaluate/run_pipeline.py"


def separable(pset: PredictionSet) -> PredictionSet:
    """The same predictions with a val split every sample of which ranks its label strictly first."""
    val = pset.splits["val"]
    logits = np.zeros_like(val.logits)
    logits[np.arange(len(val)), val.labels] = 5.0
    return PredictionSet(pset.model, {**pset.splits, "val": Split(logits, val.labels, val.ids)}, dict(pset.meta))


@pytest.fixture
def perfect_val(tmp_path):
    """predictions/ whose two models predict val perfectly (each with a features file), a duos CSV."""
    folder = tmp_path / "predictions"
    for pset in make_duo_logits(num_classes=4, seed=2).values():
        write_set(separable(pset), folder)
        write_features(pset, folder / f"{pset.model}.features.npz")
    (tmp_path / "duos.csv").write_text("model_large,model_small,gflops_large,gflops_small\nlarge,small,10,1\n")
    return tmp_path


def fitting_entry_points(root):
    preds, out, cal, duos = root / "predictions", root / "results", root / "calibrated", root / "duos.csv"
    folders = ["--predictions_dir", preds, "--output_dir", out, "--calibrated_dir", cal]
    return {
        "stage 2": [S2, "--predictions_dir", preds, "--output_dir", cal],
        "stage 3": [S3, "--config", duos, "--predictions_dir", preds, "--output_dir", cal],
        "stage 3dy": [S3DY, "--config", duos, *folders],
        "stage 4 --fit_missing": [S4, *folders, "--fit_missing"],
        "stage 5 --fit_missing": [S5, "--config", duos, *folders, "--fit_missing"],
        "stage 7 --fit_missing": [S7, "--config", duos, *folders, "--fit_missing"],
        "stage 8": [S8, "--members", preds / "large.npz", preds / "small.npz", "--sizes", "2", "--output_dir", out],
        "stage 8 --base": [S8, "--members", preds / "large.npz", preds / "small.npz", "--sizes", "1", "--output_dir",
                           out, "--bootstrap", "100"],
    }


@pytest.mark.parametrize("entry", ["stage 2", "stage 3", "stage 3dy", "stage 4 --fit_missing", "stage 5 --fit_missing",
                                   "stage 7 --fit_missing", "stage 8", "stage 8 --base"])
def test_every_fit_refuses_a_perfectly_predicted_val_split(perfect_val, stage, entry):
    script, *args = fitting_entry_points(perfect_val)[entry]
    before = snapshot(perfect_val)
    code, _, err = stage(script, *args)
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: "), err
    assert "every 'val' sample correctly" in err and "no finite" in err, err
    assert snapshot(perfect_val) == before


def test_the_torch_wrappers_refuse_a_perfectly_predicted_val_split():
    from load_models.DuoWrapper import DuoWrapper
    from load_models.TempScaleWrapper import TempScaleWrapper
    from utils.errors import UserError
    sets = {name: separable(pset) for name, pset in make_duo_logits(num_classes=4).items()}
    val_large, val_small = sets["large"].splits["val"], sets["small"].splits["val"]
    with pytest.raises(UserError, match="every 'val' sample correctly"):
        TempScaleWrapper().fit(val_large.logits, val_large.labels)
    with pytest.raises(UserError, match="every 'val' sample correctly"):
        DuoWrapper(None, None).fit(val_large.logits, val_small.logits, val_large.labels)


@pytest.fixture
def tiny_test(tmp_path):
    """A good workspace (temperatures fitted) whose test split has 5 samples."""
    sizes = {"val": 300, "test": 5, "ood_test": 300}
    folder = tmp_path / "predictions"
    for pset in make_duo_logits(num_classes=4, sizes=sizes, seed=1, models=("ResNet50", "ResNet50_greedy")).values():
        write_set(pset, folder)
    (tmp_path / "duos.csv").write_text("model_large,model_small,gflops_large,gflops_small\nResNet50,ResNet50_greedy,4,1\n")
    return tmp_path


def test_every_bootstrap_refuses_a_split_too_small_for_it(tiny_test, stage):
    preds, out, cal = tiny_test / "predictions", tiny_test / "results", tiny_test / "calibrated"
    folders = ["--predictions_dir", preds, "--output_dir", out, "--calibrated_dir", cal, "--fit_missing"]
    entries = [[S4, *folders], [S5, "--config", tiny_test / "duos.csv", *folders],
               [S8, "--members", preds / "ResNet50.npz", preds / "ResNet50_greedy.npz", "--sizes", "2", "--output_dir",
                out]]
    before = snapshot(tiny_test)
    for script, *args in entries:
        code, _, err = stage(script, *args, "--bootstrap", "100")
        assert code == 2 and f"5 sample(s), too few for a paired bootstrap (it needs {bootstrap.FEWEST_SAMPLES}" in err, err
        assert "split 'test'" in err
        assert snapshot(tiny_test) == before
        assert stage(script, *args)[0] == 0, script             # without --bootstrap the split is evaluated
        before = snapshot(tiny_test)


def test_a_zero_width_interval_is_never_significant():
    assert not bootstrap.excludes_zero(0.3, 0.3) and not bootstrap.excludes_zero(-2.0, -2.0)
    assert bootstrap.excludes_zero(0.1, 0.3) and bootstrap.excludes_zero(-0.3, -0.1)
    assert list(bootstrap.excludes_zero(np.array([0.2, 0.2, -1.0]), np.array([0.2, 0.4, -0.5]))) == [False, True, True]


# ----------------------------------------------------------------------------- names

# every flag that names a model or a label that becomes part of a file name, with the smallest command line around it
NAME_FLAGS = {
    S2: (["--predictions_dir", "p"], ["--models"]),
    S4: ([], ["--models"]),
    S8: (["--members", "a.npz", "b.npz"], ["--name"]),
    S9: ([], ["--large", "--base", "--table1_sidekicks"]),
    "evaluate/1_single_model_prediction.py": (["--all_models"], ["--model"]),
    "evaluate/6_laplace.py": (["--model_path", "x.pth", "--dataset", "mnist5k"], ["--model", "--save_name"]),
    "train/hp_tune.py": (["--dataset", "mnist5k"], ["--model", "--save_name"]),
    "train/make_soup.py": (["--dataset", "mnist5k"], ["--model", "--save_name"]),
    "train/ivon_train.py": (["--dataset", "mnist5k"], ["--model", "--save_name"]),
    "train/download_imagenet_models.py": ([], ["--models"]),
}


@pytest.mark.parametrize("script", sorted(NAME_FLAGS))
def test_every_name_flag_takes_plain_names_only(script):
    parser = importlib.import_module(script[:-3].replace("/", ".")).build_parser()
    required, names = NAME_FLAGS[script]
    for flag in names:
        action = next(a for a in parser._actions if flag in a.option_strings)
        assert action.type is parsing.plain_name, (script, flag)
        extra = [] if flag == "--model" and "--model" in required else (["--model", "m"] if "--model" not in names and
                                                                        script.startswith("train/") and
                                                                        "download" not in script else [])
        for bad in ("../x", "a/b", " lead", "x\ny"):
            with pytest.raises(SystemExit):
                parser.parse_args([*required, *extra, flag, bad])
    # and a plain name parses
    flag = names[0]
    extra = ["--model", "m"] if script.startswith("train/") and "download" not in script and flag != "--model" else []
    parser.parse_args([*required, *extra, flag, "resnet50.a1_in1k"])


# ----------------------------------------------------------------------------- the pipeline YAML

def stage_action(script: str, flag: str) -> argparse.Action:
    parser = importlib.import_module(script[:-3].replace("/", ".")).build_parser()
    return next(a for a in parser._actions if flag in a.option_strings)


PROBES = ["0", "1", "2", "50", "99", "100", "1000", "100000", "100001", "1001", "-1", "0.5", "1.1", "1e-300", "inf", "nan",
          "1e400", "abc"]


def test_the_pipeline_checks_each_key_with_the_flag_it_becomes():
    from utils.pipeline.schema import PASSED_ON, PIPELINE_SCHEMA
    for key, targets in PASSED_ON.items():
        section, _, name = key.rpartition(".")
        field = PIPELINE_SCHEMA[section][name] if section else PIPELINE_SCHEMA[name]
        for script, flag in targets:
            action = stage_action(script, flag)
            if action.choices is not None:
                assert set(field.choices) == set(action.choices), (key, script, flag)
                continue
            assert field.check is action.type, (key, script, flag)          # the same function: one definition
            for probe in PROBES:                                        # and so the same verdict on every value
                try:
                    action.type(probe)
                    stage_accepts = True
                except argparse.ArgumentTypeError:
                    stage_accepts = False
                try:
                    field.check(probe)
                    yaml_accepts = True
                except argparse.ArgumentTypeError:
                    yaml_accepts = False
                assert yaml_accepts == stage_accepts, (key, probe)


@pytest.mark.parametrize("line, expected", [
    ("bootstrap: 50", "'bootstrap': expected 0 (off) or a whole number from 100"),
    ("bootstrap: 200000", "'bootstrap': expected 0 (off)"),
    ("cascades: {budgets: [.inf]}", "'cascades.budgets': expected a finite number > 0"),
    ("cascades: {steps: 5000}", "'cascades.steps': expected a whole number from 1 to 1000"),
    ("ivon: {learning_rate: .inf}", "'ivon.learning_rate': expected a finite number > 0"),
    ("output_root: ''", "'output_root' is empty"),
])
def test_the_pipeline_refuses_before_training_what_a_stage_would_refuse_after_it(tmp_path, stage, line, expected):
    config = tmp_path / "pipeline.yaml"
    config.write_text(f"dataset: mnist5k\nlarge: resnet18\nsidekicks: [resnet10t]\nstages: [temp_scale]\n{line}\n")
    code, _, err = stage(PIPE, "--config", config, "--output_root", tmp_path / "run")
    assert code == 2 and expected in err, err
    assert not (tmp_path / "run").exists()


def test_the_bootstrap_flag_and_the_library_agree_on_the_bounds():
    assert parsing.bootstrap_resamples(str(bootstrap.FEWEST_RESAMPLES)) == bootstrap.FEWEST_RESAMPLES
    assert parsing.bootstrap_resamples(str(bootstrap.MOST_RESAMPLES)) == bootstrap.MOST_RESAMPLES
    for outside in (bootstrap.FEWEST_RESAMPLES - 1, bootstrap.MOST_RESAMPLES + 1):
        with pytest.raises(argparse.ArgumentTypeError):
            parsing.bootstrap_resamples(str(outside))


# ----------------------------------------------------------------------------- tables

def test_make_duos_reads_its_csvs_as_the_stages_do(tmp_path, stage):
    script = "configs/make_duos.py"
    out = tmp_path / "out"
    assert stage(script, "--output_dir", out)[0] == 0
    with open(out / "duos.csv", "a") as handle:               # a hand-added sidekick named NA stays a name
        handle.write("ConvNeXt_Base,NA,,,,,\n")
    assert stage(script, "--output_dir", out)[0] == 0
    assert pd.read_csv(out / "duos.csv", keep_default_na=False).tail(1)[["model_large", "model_small"]].values.tolist() == \
        [["ConvNeXt_Base", "NA"]]
    cases = {"model_name,GFLOPS\na,1\nb,x\n": "non-numeric value 'x' in column 'GFLOPS'",
             "model_name\na\n": "no GFLOPS column",
             "model_name,GFLOPS\na,1\nb,-2\n": "GFLOPS must be a finite number > 0",
             "model_name,GFLOPS\n../a,1\n": "is not a plain name",
             "model_name,GFLOPS\na,1\nA,2\n": "two rows for backbone"}
    for number, (text, expected) in enumerate(cases.items()):
        backbones = tmp_path / f"backbones{number}.csv"
        backbones.write_text(text)
        code, _, err = stage(script, "--backbone_csv", backbones, "--output_dir", tmp_path / "new")
        assert code == 2 and expected in err and "Traceback" not in err, (text, err)
    assert not (tmp_path / "new").exists()
    (out / "duos.csv").write_text("model_large,model_small\nConvNeXt_Base\n")        # a malformed existing duos CSV
    before = snapshot(out)
    code, _, err = stage(script, "--output_dir", out)
    assert code == 2 and "lacks model_large or model_small" in err
    assert snapshot(out) == before                                # neither file was written
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    code, _, err = stage(script, "--output_dir", blocker)
    assert code == 2 and "a file of that name is in the way" in err


@pytest.mark.parametrize("script", [S3, S5, S7, "configs/make_duos.py"])
def test_a_flops_balance_that_contradicts_the_costs_is_refused(tmp_path, stage, script):
    for pset in make_duo_logits(num_classes=4).values():
        write_set(pset, tmp_path / "predictions")
    duos = tmp_path / "duos.csv"
    duos.write_text("model_large,model_small,gflops_large,gflops_small,gflops_balance\nlarge,small,10,1,0.5\n")
    args = {"configs/make_duos.py": ["--output_dir", tmp_path]}.get(
        script, ["--config", duos, "--predictions_dir", tmp_path / "predictions", "--fit_missing"] if script != S3 else
        ["--config", duos, "--predictions_dir", tmp_path / "predictions"])
    if script != S3 and script != "configs/make_duos.py":
        args += ["--output_dir", tmp_path / "results", "--calibrated_dir", tmp_path / "cal"]
    code, _, err = stage(script, *args)
    assert code == 2 and "gflops_balance 0.5 is not gflops_small / gflops_large = 0.1" in err, err


@pytest.mark.parametrize("script", [S3, S5, S7, "evaluate/3dy_duo_temp_scale.py"])
def test_a_flops_balance_that_contradicts_the_looked_up_costs_is_refused(tmp_path, stage, script):
    # empty gflops are filled from configs/backbones.csv (ConvNeXt_Tiny / ConvNeXt_Base is about 0.29)
    for pset in make_duo_logits(num_classes=4, models=("ConvNeXt_Base", "ConvNeXt_Tiny")).values():
        write_set(pset, tmp_path / "predictions")
    duos = tmp_path / "duos.csv"
    duos.write_text("model_large,model_small,gflops_balance\nConvNeXt_Base,ConvNeXt_Tiny,0.9\n")
    code, _, err = stage(script, "--config", duos, "--predictions_dir", tmp_path / "predictions", "--output_dir",
                         tmp_path / "out")
    assert code == 2 and "gflops_balance 0.9 is not gflops_small / gflops_large" in err, err


def test_an_empty_output_root_flag_is_refused(tmp_path, stage):
    code, _, err = stage(PIPE, "--config", "configs/pipeline_mnist5k.yaml", "--print_slurm", "--output_root", "")
    assert code == 2 and "--output_root: empty" in err, err


@pytest.mark.parametrize("script", [S5, S7, S9])
def test_duo_weights_that_contradict_their_temperatures_are_refused(tmp_path, stage, script):
    for pset in make_duo_logits(num_classes=4).values():
        write_set(pset, tmp_path / "predictions")
    (tmp_path / "duos.csv").write_text("model_large,model_small,gflops_large,gflops_small\nlarge,small,10,1\n")
    common = ["--predictions_dir", tmp_path / "predictions", "--calibrated_dir", tmp_path / "cal"]
    assert stage(S2, "--predictions_dir", tmp_path / "predictions", "--output_dir", tmp_path / "cal")[0] == 0
    assert stage(S3, "--config", tmp_path / "duos.csv", "--predictions_dir", tmp_path / "predictions",
                 "--output_dir", tmp_path / "cal")[0] == 0
    assert stage(S4, *common, "--output_dir", tmp_path / "results")[0] == 0
    table = tmp_path / "cal" / "temperature_duo.csv"
    frame = pd.read_csv(table)
    frame["weight_large"] *= 1.5                       # hand-edited: the temperatures still say otherwise
    frame.to_csv(table, index=False)
    args = {S9: ["--results_dir", tmp_path / "results", *common]}.get(
        script, ["--config", tmp_path / "duos.csv", *common, "--output_dir", tmp_path / "results"])
    code, _, err = stage(script, *args)
    assert code == 2 and "weight_large" in err and "disagrees with temperature_large" in err, err

