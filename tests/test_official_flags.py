"""The official code's command lines (docs/official-code.md) parse, with the official meaning, and the
flags docs/official-code.md lists as not accepted are indeed refused."""
import importlib

import numpy as np
import pandas as pd
import pytest
import torch

from load_models import model_loader
from tests.helpers import make_duo_logits, write_official

OFFICIAL = {
    "train/hp_tune.py": "--model_name ResNet50 --dataset_name caltech256 --dataset_dir D --config_dir configs "
                        "--source torchvision --tv_weights DEFAULT --num_samples 16 --skip_lp_if_exist False",
    "train/make_soup.py": "--model_name ResNet50 --dataset_name caltech256 --source torchvision --data_dir D",
    "train/ivon_train.py": "--model_name ResNet50 --dataset_name caltech256 --dataset_dir D --config_dir configs "
                           "--source torchvision --tv_weights DEFAULT --train_samples 1 --test_samples 8 "
                           "--learning_rate 0.001",
    "train/download_imagenet_models.py": "--backbone_csv configs/backbones.csv",
    "evaluate/1_single_model_prediction.py": "--model_dir_path checkpoints/caltech256/ff --backbone_csv "
                                             "configs/backbones.csv --dataset_name caltech256 --dataset_dir D "
                                             "--ood_dataset_dir O --mode soup --feature_extractor_mode",
    "evaluate/2_temp_scale.py": "--prediction_dir_path y-prediction/caltech256/val/raw --dataset_name caltech256",
    "evaluate/3_duo_temp_scale.py": "--prediction_dir_path y-prediction/caltech256/val/raw --dataset_name caltech256 "
                                    "--duo_csv_path configs/duos.csv",
    "evaluate/4_evaluate_predictions.py": "--dataset_name caltech256 --backbone_csv configs/backbones.csv "
                                          "--prediction_dir_path y-prediction/caltech256 --save_dir evaluation/eval_res",
    "evaluate/5_evaluate_duo_predictions.py": "--prediction_dir_path y-prediction/caltech256 --dataset_name caltech256 "
                                              "--duo_csv_path configs/duos.csv --save_dir evaluation/eval_res",
    "evaluate/6_laplace.py": "--model_name swin_v2_s --trained_model_path ck.pth --dataset_name caltech256 "
                             "--dataset_dir D --hessian_structure kron --subset_of_weights last_layer",
    "evaluate/8_evaluate_deep_ensemble.py": "--dataset_name caltech256 --backbone_csv_path configs/backbones.csv "
                                            "--prediction_dir y-prediction/caltech256/test/deep_ensemble "
                                            "--save_dir evaluation/eval_res",
    "evaluate/3dy_duo_temp_scale.py": "--dataset_name caltech256 --duo_csv_path configs/duos.csv --num_epochs 8 "
                                      "--optimizer adam --mode concat",
}
# what docs/official-code.md says is not accepted, and why (each must really be refused)
NOT_ACCEPTED = {
    "train/download_imagenet_models.py": "--model_save_dir checkpoints/imagenet",
    "evaluate/3dy_duo_temp_scale.py": "--features_dir y-prediction/caltech256",
    "evaluate/extra_eval_throughput.py": "--single_csv s.csv --duo_csv d.csv --num_classes 257",
}


def parse(script: str, line: str):
    return importlib.import_module(script[:-3].replace("/", ".")).build_parser().parse_args(line.split())


@pytest.mark.parametrize("script", sorted(OFFICIAL))
def test_official_command_line_parses(script):
    """Every official flag lands in its own destination with the value given (converted by the flag's own type):
    none is swallowed by another flag, dropped, or overwritten by a default."""
    parser = importlib.import_module(script[:-3].replace("/", ".")).build_parser()
    args = parser.parse_args(OFFICIAL[script].split())
    actions = {option: action for action in parser._actions for option in action.option_strings}
    tokens = OFFICIAL[script].split()
    for i, token in enumerate(tokens):
        if not token.startswith("--"):
            continue
        action = actions[token]
        given = tokens[i + 1] if i + 1 < len(tokens) and not tokens[i + 1].startswith("--") else None
        if given is None:
            assert getattr(args, action.dest) == action.const, (script, token)
        else:
            expected = action.type(given) if action.type else given
            expected = [expected] if action.nargs in ("+", "*") else expected
            assert getattr(args, action.dest) == expected, (script, token, given)


def test_official_flags_keep_their_meaning():
    hp = parse("train/hp_tune.py", OFFICIAL["train/hp_tune.py"])
    assert hp.model == "ResNet50" and hp.dataset == "caltech256" and hp.data_dir == "D" and hp.config_dir == "configs"
    assert hp.skip_lp_if_exist is False and hp.num_samples == 16 and hp.source == "torchvision"
    assert parse("train/hp_tune.py", "--model m --dataset caltech256 --skip_lp_if_exist True").skip_lp_if_exist is True
    assert parse("train/hp_tune.py", "--model m --dataset caltech256 --skip_lp_if_exist").skip_lp_if_exist is True
    assert parse("train/hp_tune.py", "--model m --dataset caltech256").skip_lp_if_exist is True
    with pytest.raises(SystemExit):
        parse("train/hp_tune.py", "--model m --dataset caltech256 --skip_lp_if_exist maybe")
    soup = parse("train/make_soup.py", OFFICIAL["train/make_soup.py"])
    assert soup.source == "torchvision" and soup.data_dir == "D"
    ivon = parse("train/ivon_train.py", OFFICIAL["train/ivon_train.py"])
    assert ivon.config_dir == "configs" and ivon.source == "torchvision" and ivon.tv_weights == "DEFAULT"
    stage1 = parse("evaluate/1_single_model_prediction.py", OFFICIAL["evaluate/1_single_model_prediction.py"])
    assert stage1.mode == "soup" and stage1.features and stage1.ood_dir == "O" and stage1.model_dir.endswith("ff")
    de = parse("evaluate/8_evaluate_deep_ensemble.py", OFFICIAL["evaluate/8_evaluate_deep_ensemble.py"])
    assert de.members is None and de.backbone_csv == "configs/backbones.csv" and de.output_dir == "evaluation/eval_res"
    dy = parse("evaluate/3dy_duo_temp_scale.py", OFFICIAL["evaluate/3dy_duo_temp_scale.py"])
    assert dy.num_epochs == 8 and dy.optimizer == "adam"


@pytest.mark.parametrize("script", sorted(NOT_ACCEPTED))
def test_flags_listed_as_not_accepted_are_refused(script):
    with pytest.raises(SystemExit):
        parse(script, NOT_ACCEPTED[script])


def test_hp_tune_config_dir_reads_the_dataset_yaml(tmp_path):
    from utils.cli.config import dataset_config
    (tmp_path / "caltech256.yaml").write_text("training:\n  num_epochs_ff: 3\n")
    assert dataset_config("caltech256", config_dir=tmp_path)["training"]["num_epochs_ff"] == 3
    assert dataset_config("caltech256", config_dir="configs")["training"]["num_epochs_ff"] == 16   # the repository's


def test_official_deep_ensemble_folder(tmp_path, stage):
    """Stage 8's official form: the pre-averaged <model>_<m>.csv files (no header) of a folder, labels
    from ../point_prediction.csv, evaluated raw; files that are not <backbone>_<m>.csv are skipped."""
    pset = make_duo_logits(models=("ResNet50_1", "x"))["ResNet50_1"]
    root = write_official(pset, tmp_path / "y-prediction" / "caltech256")
    folder = root / "test" / "deep_ensemble"
    folder.mkdir()
    test = pset.splits["test"]
    for m in (1, 2):
        pd.DataFrame(test.logits * m).to_csv(folder / f"ResNet50_{m}.csv", index=False, header=False)
    pd.DataFrame(test.logits).to_csv(folder / "notes.csv", index=False, header=False)

    def official_stage8(prediction_dir):
        return stage("evaluate/8_evaluate_deep_ensemble.py", "--dataset_name", "caltech256", "--backbone_csv_path",
                     "configs/backbones.csv", "--prediction_dir", prediction_dir, "--save_dir", tmp_path / "res")

    code, out, err = official_stage8(folder)
    assert code == 0, err
    rows = pd.read_csv(tmp_path / "res" / "evaluation_deep_ensemble_caltech256.csv")
    assert sorted(set(rows.m)) == [1, 2] and set(rows.model) == {"ResNet50"} and set(rows.subset) == {"top"}
    raw_acc = np.mean(test.logits.argmax(1) == test.labels)
    assert rows[(rows.m == 1)].Acc.iloc[0] == pytest.approx(raw_acc)
    assert "notes.csv: not <backbone>_<m>.csv, skipped" in out
    # the same form on the ood_test folder fills the _ood file and leaves the test rows alone
    ood_folder = root / "ood_test" / "deep_ensemble"
    ood_folder.mkdir()
    ood = pset.splits["ood_test"]
    pd.DataFrame(ood.logits).to_csv(ood_folder / "resnet50_1.csv", index=False, header=False)
    code, out, err = official_stage8(ood_folder)
    assert code == 0, err
    ood_rows = pd.read_csv(tmp_path / "res" / "evaluation_deep_ensemble_caltech256_ood.csv")
    assert set(ood_rows.split) == {"ood_test"} and set(ood_rows.model) == {"ResNet50"}
    assert ood_rows.Acc.iloc[0] == pytest.approx(np.mean(ood.logits.argmax(1) == ood.labels))
    assert pd.read_csv(tmp_path / "res" / "evaluation_deep_ensemble_caltech256.csv").equals(rows)


def test_stage1_mode_soup_predicts_only_the_soups(tmp_path):
    stage1 = importlib.import_module("evaluate.1_single_model_prediction")
    folder = tmp_path / "ff"
    for name in ("resnet50", "resnet50_greedy", "resnet50_uniform"):
        model_loader.save_checkpoint(folder / f"{name}.pth", {"w": torch.zeros(1)}, model_name="resnet50",
                                     source="torchvision")
    from utils.files import tables
    backbones = tables.read_backbones()
    soups = stage1.list_jobs(stage1.build_parser().parse_args(
        ["--model_dir_path", str(folder), "--dataset", "caltech256", "--mode", "soup"]), backbones)
    assert [job["name"] for job in soups] == ["ResNet50_greedy", "ResNet50_uniform"]
    every = stage1.list_jobs(stage1.build_parser().parse_args(
        ["--model_dir_path", str(folder), "--dataset", "caltech256"]), backbones)
    assert [job["name"] for job in every] == ["ResNet50", "ResNet50_greedy", "ResNet50_uniform"]
    assert {job["arch"] for job in every} == {"resnet50"}
