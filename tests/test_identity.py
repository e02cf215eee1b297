"""One model identity everywhere (docs/files.md, "Model names"): names in any case, backbones.csv spelling for files a
stage creates, the file name over meta.model, configs from any working folder."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import REPO, snapshot
from tests.helpers import make_duo_logits, write_set
from utils.cli.parsing import UserError
from utils.files import safe_io, tables
from utils.files.model_names import NameMap, canonical_name, check_plain_name, find_file, unique_by_case
from utils.files.prediction_io import list_prediction_files, read_predictions, write_predictions

S2, S3, S4, S5 = ("evaluate/2_temp_scale.py", "evaluate/3_duo_temp_scale.py", "evaluate/4_evaluate_predictions.py",
                  "evaluate/5_evaluate_duo_predictions.py")
BACKBONES = tables.backbone_names(tables.read_backbones())


def test_canonical_name_follows_backbones_spelling():
    assert canonical_name("convnext_base", BACKBONES) == "ConvNeXt_Base"
    assert canonical_name("resnet50_s3", BACKBONES) == "ResNet50_s3"
    assert canonical_name("swin_v2_s_la", BACKBONES) == "Swin_V2_S_LA"
    assert canonical_name("resnet50_s1_ivon_det", BACKBONES) == "ResNet50_s1_ivon_det"
    assert canonical_name("CONVNEXT_BASE_GREEDY", BACKBONES) == "ConvNeXt_Base_greedy"
    assert canonical_name("TF_EfficientNetV2_L.in21k_ft_in1k", BACKBONES) == "tf_efficientnetv2_l.in21k_ft_in1k"
    # names without a backbones.csv row keep their spelling, suffix or not
    assert canonical_name("resnet18", BACKBONES) == "resnet18"
    assert canonical_name("mobileone_s1", BACKBONES) == "mobileone_s1"
    assert canonical_name("my_net_greedy", None) == "my_net_greedy"


def test_gflops_of_derived_models():
    backbones = tables.read_backbones()
    for name in ("CONVNEXT_BASE_GREEDY", "ConvNeXt_Base_uniform", "convnext_base_s2", "ConvNeXt_Base_ivon_det"):
        assert tables.backbone_value(backbones, name, "GFLOPS") == 15.36, name
    # the MC predictive and Laplace cost more than one forward pass: no figure rather than a wrong one
    for name in ("ConvNeXt_Base_ivon", "Swin_V2_S_LA", "unknown_net"):
        assert np.isnan(tables.backbone_value(backbones, name, "GFLOPS")), name


def test_name_map_and_plain_names():
    temps = NameMap([("ResNet18", 1.5), (("ConvNeXt_Base", "resnet18"), (0.4, 0.1))])
    assert temps["resnet18"] == 1.5 and ("convnext_base", "RESNET18") in temps and temps.get("x") is None
    assert list(temps) == ["ResNet18", ("ConvNeXt_Base", "resnet18")] and temps.spelling("RESNET18") == "ResNet18"
    for bad in ("../etc", "a/b", "..", "", " x"):
        with pytest.raises(UserError):
            check_plain_name(bad, "--save_name")
    unique_by_case(["a", "b"], "--members")
    with pytest.raises(UserError, match="listed twice"):
        unique_by_case(["a", "b", "a"], "--members")
    with pytest.raises(UserError, match="differ only by case"):
        unique_by_case(["ResNet50", "resnet50"], "--members")


def test_two_files_differing_only_by_case_are_an_error(tmp_path):
    sets = make_duo_logits(models=("ResNet50", "resnet50"))
    for pset in sets.values():
        write_set(pset, tmp_path)
    with pytest.raises(UserError, match="ResNet50.npz.*resnet50.npz|resnet50.npz.*ResNet50.npz"):
        list_prediction_files(tmp_path)
    with pytest.raises(UserError, match="differ only by case"):
        find_file(tmp_path, "RESNET50.npz")


def lowercase_rn50_predictions(folder):
    """Prediction files named in lowercase (as the README's training commands name models) for ResNet50
    and its 16 sidekicks of configs/duos_rn50.csv, which spells them as configs/backbones.csv does."""
    duos = pd.read_csv(REPO / "configs" / "duos_rn50.csv")
    names = [name.lower() for name in ["ResNet50"] + list(duos.model_small)]
    sets = make_duo_logits(models=names, quality=[2.5] + [1.2] * (len(names) - 1), scale=[3.0] + [1.5] * (len(names) - 1),
                           sizes={"val": 120, "test": 150, "ood_test": 90})
    for pset in sets.values():
        write_set(pset, folder)
    return duos


def test_lowercase_files_and_backbones_spelt_duos_csv_evaluate_every_duo(tmp_path, stage):
    duos = lowercase_rn50_predictions(tmp_path / "preds")
    common = ["--predictions_dir", tmp_path / "preds", "--calibrated_dir", tmp_path / "cal"]
    code, _, err = stage(S2, "--predictions_dir", tmp_path / "preds", "--output_dir", tmp_path / "cal")
    assert code == 0, err
    code, _, err = stage(S3, "--config", "configs/duos_rn50.csv", "--predictions_dir", tmp_path / "preds",
                         "--output_dir", tmp_path / "cal")
    assert code == 0, err
    assert len(pd.read_csv(tmp_path / "cal" / "temperature_duo.csv")) == len(duos) == 16
    code, out, err = stage(S5, "--config", "configs/duos_rn50.csv", *common, "--output_dir", tmp_path / "res")
    assert code == 0 and "skipped" not in err, err
    results = pd.read_csv(tmp_path / "res" / "evaluation_duo_synthetic.csv")
    evaluated = {(a.casefold(), b.casefold()) for a, b in zip(results.model_large, results.model_small)}
    assert evaluated == {(a.casefold(), b.casefold()) for a, b in zip(duos.model_large, duos.model_small)}
    assert set(results.model_large) == {"resnet50"}            # rows keyed by the files' names
    assert results.gflops_large.eq(4.09).all() and results.gflops_small.notna().all()


def test_meta_model_disagreeing_with_the_file_name(tmp_path, stage):
    pset = make_duo_logits()["large"]
    write_predictions(pset, tmp_path / "my_copy.npz")               # meta.model says 'large'
    code, _, err = stage(S2, "--predictions", tmp_path / "my_copy.npz", "--output_dir", tmp_path / "cal")
    assert code == 0 and "meta.model is 'large'" in err and "'my_copy'" in err
    assert list(pd.read_csv(tmp_path / "cal" / "temperature_single_model.csv").full_name) == ["my_copy"]
    assert read_predictions(tmp_path / "my_copy.npz").model == "my_copy"


def test_parallel_stage2_runs_on_copies_keep_every_row(tmp_path):
    source = write_set(make_duo_logits()["large"], tmp_path)
    copies = []
    for i in range(8):
        copies.append(tmp_path / f"copy{i}.npz")
        shutil.copy(source, copies[-1])
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    runs = [subprocess.Popen([sys.executable, str(REPO / S2), "--predictions", str(path), "--output_dir",
                              str(tmp_path / "cal")], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for path in copies]
    assert all(run.wait(timeout=300) == 0 for run in runs)
    table = pd.read_csv(tmp_path / "cal" / "temperature_single_model.csv")
    assert sorted(table.full_name) == [f"copy{i}" for i in range(8)]
    assert table.temperature.nunique() == 1                       # the same logits, the same temperature


def test_a_stage_run_from_any_folder_gives_the_same_bytes(tmp_path, stage, monkeypatch):
    """configs/duos_rn50.csv and configs/backbones.csv resolve from the repository, not the working
    folder: the gflops columns are filled (not NaN) and every output is byte-identical."""
    lowercase_rn50_predictions(tmp_path / "preds")
    outputs = {}
    for where, cwd in (("repo", REPO), ("elsewhere", tmp_path / "elsewhere")):
        cwd.mkdir(exist_ok=True)
        monkeypatch.chdir(cwd)
        out = tmp_path / f"out_{where}"
        common = ["--predictions_dir", tmp_path / "preds", "--calibrated_dir", out / "cal"]
        assert stage(S2, "--predictions_dir", tmp_path / "preds", "--output_dir", out / "cal")[0] == 0
        assert stage(S3, "--config", "configs/duos_rn50.csv", "--predictions_dir", tmp_path / "preds",
                     "--output_dir", out / "cal")[0] == 0
        assert stage(S4, *common, "--output_dir", out / "res")[0] == 0
        assert stage(S5, "--config", "configs/duos_rn50.csv", *common, "--output_dir", out / "res")[0] == 0
        outputs[where] = {Path(path).relative_to(out): data for path, data in snapshot(out).items()}
    assert outputs["repo"].keys() == outputs["elsewhere"].keys() and len(outputs["repo"]) >= 6
    assert outputs["repo"] == outputs["elsewhere"]
    single = pd.read_csv(tmp_path / "out_elsewhere" / "res" / "evaluation_single_model_synthetic.csv")
    assert single.gflops.notna().all() and single.params.notna().all()


def test_an_explicit_config_path_wins_over_the_repository(tmp_path, stage, monkeypatch):
    lowercase_rn50_predictions(tmp_path / "preds")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "duos_rn50.csv").write_text("model_large,model_small\nResNet50,MNASNet0_5\n")
    code, _, err = stage(S3, "--config", "configs/duos_rn50.csv", "--predictions_dir", tmp_path / "preds",
                         "--output_dir", tmp_path / "cal")
    assert code == 0, err
    assert len(pd.read_csv(tmp_path / "cal" / "temperature_duo.csv")) == 1
    code, _, err = stage(S3, "--config", "configs/nope.csv", "--predictions_dir", tmp_path / "preds")
    assert code == 2 and "configs/nope.csv not found" in err and "repository" in err


def test_features_files_are_never_prediction_files(tmp_path, stage):
    pset = make_duo_logits()["large"]
    path = write_set(pset, tmp_path)
    features = tmp_path / "large.features.npz"
    np.savez(features, features_val=np.zeros((3, 2)), ids_val=np.arange(3))
    code, out, err = stage(S2, "--predictions", path, features, "--output_dir", tmp_path / "cal")
    assert code == 0 and "left out 1 features file" in out, err
    code, _, err = stage(S2, "--predictions", features, "--output_dir", tmp_path / "cal")
    assert code == 2 and "only features files" in err
    with pytest.raises(UserError, match="features file"):
        read_predictions(features)
    assert list(list_prediction_files(tmp_path)) == ["large"]


def test_a_prediction_file_named_in_another_case_or_format_resolves(tmp_path, stage):
    write_predictions(make_duo_logits()["large"], tmp_path / "ConvNeXt_Base.npz")
    code, out, err = stage(S2, "--predictions", tmp_path / "convnext_base.csv", "--output_dir", tmp_path / "cal")
    assert code == 0, err
    assert "convnext_base.csv: reading" in out and "ConvNeXt_Base.npz" in out
    assert list(pd.read_csv(tmp_path / "cal" / "temperature_single_model.csv").full_name) == ["ConvNeXt_Base"]
    code, _, err = stage(S2, "--predictions", tmp_path / "absent.npz", "--output_dir", tmp_path / "cal")
    assert code == 2 and "absent.npz: prediction file not found" in err


def test_a_duo_of_one_model_with_itself_is_refused(tmp_path, stage):
    path = write_set(make_duo_logits()["large"], tmp_path)
    code, _, err = stage(S3, "--large_model_pred", path, "--small_model_pred", tmp_path / "LARGE.csv",
                         "--output_dir", tmp_path / "cal")
    assert code == 2 and "are the same model (large); a duo needs two" in err and not (tmp_path / "cal").exists()


def test_temperature_tables_match_names_in_any_case_and_reject_duplicates(tmp_path):
    path = tmp_path / "temperature_single_model.csv"
    path.write_text("full_name,temperature\nResNet18,1.5\n")
    assert tables.read_single_temperatures(path)["resnet18"].value == 1.5
    outputs = safe_io.Outputs()
    tables.queue_single_temperatures(outputs, tmp_path, [{"full_name": "resnet18", "temperature": 2.0}])
    outputs.commit()
    frame = pd.read_csv(path)
    assert list(frame.full_name) == ["resnet18"] and frame.temperature.item() == 2.0     # one row, replaced
    path.write_text("full_name,temperature\nResNet18,1.5\nresnet18,2.0\n")
    with pytest.raises(UserError, match="two rows for model"):
        tables.read_single_temperatures(path)
    duo = tmp_path / "temperature_duo.csv"
    duo.write_text("model_large,model_small,temperature_large,temperature_small\nA,b,1,2\na,B,1,3\n")
    with pytest.raises(UserError, match="two rows for duo a \\+ B"):
        tables.read_duo_weights(duo)


def test_duos_csv_rows_pairing_a_model_with_itself_or_repeated(tmp_path):
    path = tmp_path / "duos.csv"
    path.write_text("model_large,model_small\nResNet50,MNASNet0_5\nresnet50,mnasnet0_5\n")
    assert len(tables.read_duos(path)) == 1
    path.write_text("model_large,model_small\nResNet50,resnet50\n")
    with pytest.raises(UserError, match="pairs ResNet50 with itself"):
        tables.read_duos(path)
    path.write_text("model_large,model_small\nResNet50,../../tmp/evil\n")
    with pytest.raises(UserError, match="data row 1, model_small: '../../tmp/evil' is not a plain name"):
        tables.read_duos(path)


def test_report_keeps_to_the_large_models_dataset_and_ensembles(tmp_path, stage):
    """One results folder holding two datasets (as the README's two blocks write): the report of a large
    model shows its dataset only, and no other architecture's deep ensembles."""
    for dataset, names in (("dsa", ("ConvNeXt_Base", "EfficientNet_B0")), ("dsb", ("ResNet50", "ResNet50_s1"))):
        sets = make_duo_logits(models=names)
        for pset in sets.values():
            pset.meta["dataset"] = dataset
            write_set(pset, tmp_path / dataset)
        common = ["--predictions_dir", tmp_path / dataset, "--calibrated_dir", tmp_path / f"cal_{dataset}"]
        assert stage(S4, *common, "--output_dir", tmp_path / "res", "--fit_missing")[0] == 0
        duos = tmp_path / f"duos_{dataset}.csv"
        duos.write_text(f"model_large,model_small\n{names[0]},{names[1]}\n")
        assert stage(S5, "--config", duos, *common, "--output_dir", tmp_path / "res", "--fit_missing")[0] == 0
    assert stage("evaluate/8_evaluate_deep_ensemble.py", "--members", "ResNet50", "ResNet50_s1", "--predictions_dir",
                 tmp_path / "dsb", "--sizes", 2, "--output_dir", tmp_path / "res")[0] == 0
    code, out, err = stage("evaluate/9_make_report.py", "--results_dir", tmp_path / "res", "--large", "convnext_base",
                           "--calibrated_dir", tmp_path / "cal_dsa")
    assert code == 0, err
    report = (tmp_path / "res" / "REPORT.md").read_text()
    assert report.startswith("# Asymmetric duos report: dsa\n") and "ConvNeXt_Base (temp-scaled)" in report
    assert "ResNet50" not in report and "deep ensemble m=" not in report and "DE(m=" not in report
    code, out, err = stage("evaluate/9_make_report.py", "--results_dir", tmp_path / "res", "--large", "ResNet50",
                           "--output", tmp_path / "rn50.md")
    assert code == 0, err
    assert "deep ensemble m=2" in (tmp_path / "rn50.md").read_text()


def test_names_from_files_never_become_paths_unchecked(tmp_path, stage):
    pset = make_duo_logits()["large"]
    pset.meta["dataset"] = "../escape"
    write_predictions(pset, tmp_path / "p" / "large.npz")
    code, _, err = stage(S4, "--predictions_dir", tmp_path / "p", "--output_dir", tmp_path / "res", "--fit_missing",
                         "--calibrated_dir", tmp_path / "cal")
    assert code == 2 and "not a plain name" in err
    assert not (tmp_path / "escape").exists() and not (tmp_path / "res").exists() and not (tmp_path / "cal").exists()


def test_names_that_look_like_numbers_or_missing_values_stay_names(tmp_path, stage):
    """`050`, `NA` and `null` are model names: every table reads them back as written, and a duos CSV row
    `18,050` finds 050.npz, never 50.npz."""
    sets = make_duo_logits(num_classes=5, models=("18", "050", "NA", "50"), quality=(2.5, 1.5, 1.2, 2.0),
                           scale=(2.0, 1.0, 1.0, 1.5))
    for pset in sets.values():
        write_set(pset, tmp_path / "p")
    cal, out = tmp_path / "cal", tmp_path / "res"
    assert stage(S2, "--predictions_dir", tmp_path / "p", "--output_dir", cal)[0] == 0
    (tmp_path / "duos.csv").write_text("model_large,model_small\n18,050\n18,NA\n")
    for script, args in ((S3, ["--config", tmp_path / "duos.csv", "--predictions_dir", tmp_path / "p", "--output_dir", cal]),
                         (S4, ["--predictions_dir", tmp_path / "p", "--output_dir", out, "--calibrated_dir", cal]),
                         (S5, ["--config", tmp_path / "duos.csv", "--predictions_dir", tmp_path / "p", "--output_dir", out,
                               "--calibrated_dir", cal])):
        code, _, err = stage(script, *args)
        assert code == 0, err
    duo = pd.read_csv(cal / "temperature_duo.csv", dtype=str, keep_default_na=False)
    assert sorted(zip(duo.model_large, duo.model_small)) == [("18", "050"), ("18", "NA")]
    expected = tables.read_duo_weights(cal / "temperature_duo.csv")[("18", "050")].value
    from utils.stages.calibration import duo_weights_row
    refit = duo_weights_row(read_predictions(tmp_path / "p" / "18.npz"), read_predictions(tmp_path / "p" / "050.npz"))
    assert expected == pytest.approx((refit["weight_large"], refit["weight_small"]))
    assert set(tables.read_single_temperatures(cal / "temperature_single_model.csv")) == {"18", "050", "NA", "50"}
