"""Every script's --help describes every flag (docs/robustness.md), and --help exits 0."""
import importlib

import pytest

SCRIPTS = ["evaluate.1_single_model_prediction", "evaluate.2_temp_scale", "evaluate.3_duo_temp_scale",
           "evaluate.3dy_duo_temp_scale", "evaluate.4_evaluate_predictions", "evaluate.5_evaluate_duo_predictions",
           "evaluate.6_laplace", "evaluate.7_evaluate_cascades", "evaluate.8_evaluate_deep_ensemble", "evaluate.9_make_report",
           "evaluate.run_pipeline",
           "evaluate.extra_eval_throughput", "train.hp_tune", "train.make_soup", "train.ivon_train",
           "train.download_imagenet_models"]


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_flag_has_a_description(name, capsys):
    module = importlib.import_module(name)
    parser = module.build_parser()
    undescribed = [a.option_strings[0] for a in parser._actions if a.option_strings and not a.help]
    assert not undescribed
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--help"])
    assert exit_info.value.code == 0 and "usage:" in capsys.readouterr().out


def test_stage1_predicts_in_fp32_unless_asked():
    """The paper's logits are fp32; bf16 (hp_tune's default on CUDA, for speed) must be asked for in stage 1."""
    stage1 = importlib.import_module("evaluate.1_single_model_prediction").build_parser()
    assert stage1.parse_args(["--model_path", "x.pth"]).precision == "fp32"
    assert importlib.import_module("train.hp_tune").build_parser().parse_args(
        ["--model", "m", "--dataset", "mnist5k"]).precision == "auto"
