"""The report's tables and figure quantities on result CSVs with known values, checked against
hand-computed numbers: three large models (and a second ResNet-50 checkpoint) x sidekicks, a ResNet-50
deep ensemble, IVON and Laplace rows, and stage 2-3 temperatures."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from utils.files import results as results_schema
from utils.files import tables
from utils.maths.uncertainty_metrics import METRIC_COLUMNS
from utils.report import paper_tables as pt

DATASET = "imagenet"
GFLOPS = {"ResNet50": 4.0, "ResNet50_greedy": 4.0, "resnet50.a1_in1k": 4.0, "resnet50.a2_in1k": 4.0, "ConvNeXt_Base": 16.0,
          "EfficientNet_V2_L": 28.0, "EfficientNet_B0": 0.4, "MNASNet0_75": 0.2, "ResNet18": 1.8, "ConvNeXt_Tiny": 4.4}
# duo i: (large, sidekick); its test Acc is 0.80 + 0.01 i and its NLL 0.5 - 0.02 i (ood_test: Acc 0.1 lower)
DUOS = {1: ("ResNet50", "EfficientNet_B0"),         # total 4.4 = 1.1 x RN50 -> AD[1,2); FB 0.1 (radar)
        2: ("ResNet50", "MNASNet0_75"),             # 4.2 -> AD[1,2); FB 0.05
        3: ("ResNet50", "ResNet18"),                # 5.8 -> AD[1,2); FB 0.45
        4: ("resnet50.a1_in1k", "EfficientNet_B0"),  # 4.4 -> AD[1,2); FB 0.1 (radar)
        5: ("ConvNeXt_Base", "EfficientNet_B0"),    # 16.4 = 4.1 x -> AD[4,5); FB 0.025
        6: ("ConvNeXt_Base", "ResNet18"),           # 17.8 -> AD[4,5); FB 0.1125 (radar, Table 4)
        7: ("ConvNeXt_Base", "ConvNeXt_Tiny"),      # 20.4 -> AD[5,6); FB 0.275 (Table 4)
        8: ("EfficientNet_V2_L", "EfficientNet_B0"),  # 28.4 -> AD[7,8)
        9: ("EfficientNet_V2_L", "ConvNeXt_Tiny"),  # 32.4 -> AD[8,9); FB 0.157 (radar)
        10: ("EfficientNet_V2_L", "ResNet18"),      # 29.8 -> AD[7,8)
        11: ("ResNet50_greedy", "EfficientNet_B0")}  # a soup's duo: Fig. 7 only, never pooled in tables or radar
SINGLE_ACC = {"ResNet50": 0.80, "resnet50.a1_in1k": 0.78, "resnet50.a2_in1k": 0.82, "ConvNeXt_Base": 0.84,
              "EfficientNet_V2_L": 0.86, "EfficientNet_B0": 0.70, "MNASNet0_75": 0.65, "ResNet18": 0.72,
              "ConvNeXt_Tiny": 0.79, "ResNet50_ivon_det": 0.805, "ResNet50_ivon_mc2_r0": 0.79,
              "ResNet50_ivon_mc2_r1": 0.80, "ResNet50_ivon_mc4_r0": 0.81, "ResNet50_ivon_mc4_r1": 0.81,
              "ConvNeXt_Base_LA": 0.845, "ResNet50_greedy": 0.81}
# ResNet50 deep ensembles of the three checkpoints: m=2 (three subsets, Acc 0.81/0.82/0.83), m=3 (one, 0.84);
# the mean/std summary rows carry nonsense so that using them shows
ENSEMBLES = [(2, "0", "ResNet50+resnet50.a1_in1k", 0.81), (2, "1", "ResNet50+resnet50.a2_in1k", 0.82),
             (2, "2", "resnet50.a1_in1k+resnet50.a2_in1k", 0.83), (3, "0", "ResNet50+resnet50.a1_in1k+resnet50.a2_in1k", 0.84),
             (2, "mean", "", 0.0), (2, "std", "", 0.0), (3, "mean", "", 0.0)]


def metrics(acc: float, nll: float = 0.5) -> dict:
    return {**{column: 0.5 for column in METRIC_COLUMNS}, "Acc": acc, "NLL": nll}


def write_results(folder):
    single, duos, ensembles = [], [], []
    for split, shift in (("test", 0.0), ("ood_test", 0.1)):
        for model, acc in SINGLE_ACC.items():
            for wrapper, penalty in (("None", 0.02), ("TempScaleWrapper", 0.0)):   # raw: same Acc, worse NLL
                for uncertainty in ("softmax_response", "entropy"):
                    single.append({**metrics(acc - shift, 0.5 + penalty), "model": model, "wrapper": wrapper,
                                   "uncertainty_type": uncertainty, "gflops": GFLOPS.get(model, math.nan), "params": 1.0,
                                   "split": split})
        for i, (large, small) in DUOS.items():
            for mode in ("asymmetric", "unweighted"):
                offset = 0.0 if mode == "asymmetric" else -0.05       # a second mode the tables must leave out
                for uncertainty in ("softmax_response", "entropy"):
                    duos.append({**metrics(0.80 + 0.01 * i - shift + offset, 0.5 - 0.02 * i), "model_large": large,
                                 "model_small": small, "mode": mode, "uncertainty_type": uncertainty,
                                 "gflops_large": GFLOPS[large], "gflops_small": GFLOPS[small],
                                 "gflops_balance": GFLOPS[small] / GFLOPS[large], "split": split})
        for m, subset, members, acc in ENSEMBLES:
            ensembles.append({**metrics(acc - shift if acc else acc), "model": "ResNet50", "m": m, "subset": subset,
                              "members": members, "uncertainty_type": "softmax_response", "split": split})
    folder.mkdir(parents=True, exist_ok=True)
    for table, rows in (("single_model", single), ("duo", duos), ("deep_ensemble", ensembles)):
        frame = pd.DataFrame(rows)
        for split, suffix in (("test", ""), ("ood_test", "_ood")):
            frame[frame["split"] == split].to_csv(folder / f"evaluation_{table}_{DATASET}{suffix}.csv", index=False)


def write_temperatures(folder):
    folder.mkdir(parents=True, exist_ok=True)
    # T^single: ResNet50 1.5, EfficientNet_B0 1.2; the duo's weights w_l = 0.6, w_s = 0.1 (T = 1 / (2 w))
    pd.DataFrame({"full_name": ["ResNet50", "EfficientNet_B0"], "temperature": [1.5, 1.2]}).to_csv(
        folder / tables.SINGLE_TEMPERATURE_FILE, index=False)
    pd.DataFrame({"model_large": ["ResNet50"], "model_small": ["EfficientNet_B0"], "temperature_large": [1 / 1.2],
                  "temperature_small": [5.0], "weight_large": [0.6], "weight_small": [0.1], "val_nll": [0.4],
                  "n_val": [100]}).to_csv(folder / tables.DUO_TEMPERATURE_FILE, index=False)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    write_results(folder / "results")
    write_temperatures(folder / "calibrated")
    single, duos, ensembles = (results_schema.read_results(folder / "results", table)
                               for table in ("single_model", "duo", "deep_ensemble"))
    return folder, single, duos, ensembles


def cells(frame: pd.DataFrame, column: str = "Acc") -> dict[str, str]:
    return dict(zip(frame["Method"], frame[column]))


def test_table2_pools_every_large_model_by_total_flops(results):
    _, single, duos, ensembles = results
    table = pt.table2(single, duos, ensembles, "ResNet50", "test")
    assert table["Method"].tolist() == ["ResNet50 (temp-scaled)", "AD[1,2)", "[DE] ResNet50 (m=2)", "[DE] ResNet50 (m=3)",
                                        "AD[4,5)", "AD[5,6)", "AD[7,8)", "AD[8,9)"]
    acc, n = cells(table), dict(zip(table["Method"], table["n"]))
    # AD[1,2): duos 1-4 (Acc 81, 82, 83, 84 %): mean 82.5, sample std sqrt(5/3)
    assert acc["AD[1,2)"] == f"82.50 ± {math.sqrt(5 / 3):.2f}" and n["AD[1,2)"] == 4
    assert acc["AD[4,5)"] == f"85.50 ± {math.sqrt(0.5):.2f}" and n["AD[4,5)"] == 2       # duos 5, 6
    assert acc["AD[5,6)"] == "87.00" and n["AD[5,6)"] == 1                                # duo 7
    assert acc["AD[7,8)"] == f"89.00 ± {math.sqrt(2):.2f}" and n["AD[7,8)"] == 2         # duos 8 (88) and 10 (90)
    assert acc["AD[8,9)"] == "89.00"
    # NLL x100: duos 1-4 have 48, 46, 44, 42
    assert cells(table, "NLL")["AD[1,2)"] == f"45.00 ± {math.sqrt(20 / 3):.2f}"
    # the base over its three checkpoints (80, 78, 82 %), the ensembles over their subsets, summaries unused
    assert acc["ResNet50 (temp-scaled)"] == "80.00 ± 2.00" and n["ResNet50 (temp-scaled)"] == 3
    assert acc["[DE] ResNet50 (m=2)"] == "82.00 ± 1.00" and acc["[DE] ResNet50 (m=3)"] == "84.00"
    assert dict(zip(table["Method"], table["FLOPs (G)"]))["AD[4,5)"] == "[16,20)"
    assert cells(table, "Brier")["AD[1,2)"] == "5000.00 ± 0.00"                         # x10^4
    ood = cells(pt.table2(single, duos, ensembles, "ResNet50", "ood_test"))
    assert ood["AD[1,2)"] == f"72.50 ± {math.sqrt(5 / 3):.2f}"


def test_table1_rows(results):
    _, single, duos, ensembles = results
    table = pt.table1(single, duos, ensembles, "ResNet50", "test")
    assert table["Method"].tolist() == ["ResNet50 (temp-scaled)", "[AD] ResNet50+MNASNet0_75",
                                        "[AD] ResNet50+EfficientNet_B0", "[AD] ResNet50+ResNet18",
                                        "[DE] ResNet50 (m=2)", "[DE] ResNet50 (m=3)"]
    acc = cells(table)
    # EfficientNet_B0 with both base checkpoints that have duos: 81 (ResNet50) and 84 (a1)
    assert acc["[AD] ResNet50+EfficientNet_B0"] == f"82.50 ± {math.sqrt(4.5):.2f}"
    assert acc["[AD] ResNet50+MNASNet0_75"] == "82.00" and acc["[AD] ResNet50+ResNet18"] == "83.00"
    assert table["Balance (%)"].tolist() == ["0", "5", "10", "45", "100", "200"]
    only = pt.table1(single, duos, ensembles, "ResNet50", "test", sidekicks=["efficientnet_b0"])
    assert [m for m in only["Method"] if m.startswith("[AD]")] == ["[AD] ResNet50+EfficientNet_B0"]


def test_tables3_and_4(results):
    _, single, duos, _ = results
    assert pt.ivon_models(single) == ["ResNet50"] and pt.laplace_models(single) == ["ConvNeXt_Base"]
    acc = cells(pt.table3(single, duos, "ResNet50", "test"))
    assert acc == {"Baseline ResNet50": "80.00", "Temp-scaled ResNet50": "80.00", "IVON (deterministic)": "80.50",
                   "IVON (2 samples)": f"79.50 ± {math.sqrt(0.5):.2f}", "IVON (4 samples)": "81.00 ± 0.00",
                   "Asymmetric Duos [1,2)": "82.00 ± 1.00"}              # ResNet50's duos 1-3 (FB < 1)
    table4 = pt.table4(single, duos, "ConvNeXt_Base", "test")
    assert cells(table4) == {"ConvNeXt_Base baseline": "84.00", "ConvNeXt_Base temp-scaled": "84.00",
                             "ConvNeXt_Base LA": "84.50", "Asymmetric Duos": f"86.50 ± {math.sqrt(0.5):.2f}"}
    assert cells(table4, "NLL")["ConvNeXt_Base baseline"] == "52.00"              # raw: NLL 0.52


def test_radar_mean_and_std_over_every_large_model_and_sidekick(results):
    _, single, duos, _ = results
    values = pt.radar_values(single, duos, "test")
    assert sorted(zip(values["model_large"], values["model_small"])) == sorted(DUOS[i] for i in (1, 4, 6, 9))
    mean, std = pt.radar_summary(values)
    # Acc toward perfect against each duo's own large model: 81 vs 80, 84 vs 78, 86 vs 84, 89 vs 86
    acc = [100 * (0.81 - 0.80) / 0.20, 100 * (0.84 - 0.78) / 0.22, 100 * (0.86 - 0.84) / 0.16, 100 * (0.89 - 0.86) / 0.14]
    # NLL: -100 (NLL - 0.5) / 0.5 with duo NLL 0.5 - 0.02 i, i = 1, 4, 6, 9
    nll = [4.0, 16.0, 24.0, 36.0]
    acc_axis, nll_axis = pt.RADAR_METRICS.index("Acc"), pt.RADAR_METRICS.index("NLL")
    assert mean[acc_axis] == pytest.approx(np.mean(acc)) and std[acc_axis] == pytest.approx(np.std(acc, ddof=1))
    assert mean[nll_axis] == pytest.approx(20.0) and std[nll_axis] == pytest.approx(math.sqrt(544 / 3))
    # the official notebook's baseline: each duo against its raw and its TS row (raw NLL 0.52)
    both = pt.radar_values(single, duos, "test", baselines=("None", "TempScaleWrapper"))
    raw_nll = [-100 * (0.5 - 0.02 * i - 0.52) / 0.52 for i in (1, 4, 6, 9)]
    assert len(both) == 8 and pt.radar_summary(both)[0][nll_axis] == pytest.approx(np.mean(nll + raw_nll))


def test_fig10_quantity(results):
    folder, _, duos, _ = results
    weights = tables.read_duo_weights(folder / "calibrated" / tables.DUO_TEMPERATURE_FILE)
    singles = tables.read_single_temperatures(folder / "calibrated" / tables.SINGLE_TEMPERATURE_FILE)
    balances = duos.drop_duplicates(["model_large", "model_small"]).set_index(["model_large", "model_small"])["gflops_balance"]
    points = pt.temperature_ratios(weights, singles, balances)
    # T_l^duo = 1 / 1.2, T_s^duo = 5: (1.5 / (1 / 1.2)) / (1.2 / 5) = 1.8 / 0.24 = 7.5
    assert points["ratio"].tolist() == [pytest.approx(7.5)]


def test_report_command_writes_every_table_and_figure(results, stage):
    folder, *_ = results
    code, out, err = stage("evaluate/9_make_report.py", "--results_dir", folder / "results", "--calibrated_dir",
                           folder / "calibrated", "--large", "convnext_base", "EfficientNet_V2_L", "resnet50")
    assert code == 0, err
    report = (folder / "results" / "REPORT.md").read_text()
    for title in ("Table 1: base-model-controlled duos vs deep ensembles (ResNet50)", "Table 2: FLOPs-controlled",
                  "Table 3: duos vs IVON (ResNet50)", "Table 4: duos vs Laplace (ConvNeXt_Base)",
                  "Fig. 1: relative improvement", "Fig. 2: single models", "Figs. 3-6: metrics against FLOPs balance "
                  "(ConvNeXt_Base)", "Figs. 3-6: metrics against FLOPs balance (EfficientNet_V2_L)", "Fig. 10"):
        assert f"## {title}" in report, title
    assert f"| AD[1,2) | [4,8) | 4 | 82.50 ± {math.sqrt(5 / 3):.2f} |" in report
    assert "## Fig. 7: duos on the soup ResNet50_greedy" in report
    assert "Risk-coverage and reliability curves" in out.rsplit("skipped (see the report):", 1)[1]   # no --predictions_dir
    for name in ("fig1_radar", "fig2_single_models", "fig3-6_ConvNeXt_Base", "fig3-6_EfficientNet_V2_L",
                 "fig10_temperature_ratio", "fig7_ResNet50_greedy"):
        with Image.open(folder / "results" / f"{DATASET}_{name}.png") as image:
            assert image.size[0] > 300 and image.size[1] > 300


# ----------------------------------------------------------------------------- the RN50 deep-ensemble members

ENSEMBLE_CSV = "configs/imagenet_rn50_ensemble.csv"


def test_rn50_ensemble_csv_names_ten_distinct_buildable_checkpoints():
    from load_models import model_loader
    rows = tables.read_backbones(ENSEMBLE_CSV)
    assert len(rows) == 10 and rows["model_name"].str.casefold().is_unique
    assert set(rows["source"]) == {"torchvision", "timm"} and rows["model_name"].iloc[0] == "ResNet50"
    for row in rows.itertuples(index=False):
        tv_weights = None if pd.isna(row.tv_weights) else row.tv_weights
        model = model_loader.get_model_with_head(row.model_name, source=row.source, tv_weights=tv_weights,
                                                 keep_imagenet_head=True, weights="none")
        assert model_loader.find_head(model)[1].out_features == 1000
    # one architecture and cost: the members differ only by training recipe
    timm_model = model_loader.get_model_with_head("resnet50.a1_in1k", source="timm", weights="none",
                                                  keep_imagenet_head=True)
    assert model_loader.count_gflops(timm_model, 224) == pytest.approx(rows["GFLOPS"].iloc[1], abs=0.01)
    assert sum(p.numel() for p in timm_model.parameters()) == pytest.approx(25.6e6, rel=0.01)


def test_rn50_ensemble_is_stageable_and_checked_offline(tmp_path):
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch"), "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_OFFLINE": "1"}
    script = str(Path(__file__).resolve().parents[1] / "train" / "download_imagenet_models.py")
    missing = subprocess.run([sys.executable, script, "--backbone_csv", ENSEMBLE_CSV, "--check"], capture_output=True,
                             text=True, env=env, timeout=300, cwd=tmp_path)
    assert missing.returncode == 2 and "10 of 10 model(s) not staged" in missing.stderr
    assert "models--timm--resnet50.a1_in1k" in missing.stdout and "resnet50-11ad3fa6.pth" in missing.stdout
    assert "download_imagenet_models.py --models resnet50.ra_in1k" in missing.stdout
    # a timm name outside the CSV is staged (here: checked) by name, a path-like one is refused
    one = subprocess.run([sys.executable, script, "--models", "resnet50.d_in1k", "--check"], capture_output=True,
                         text=True, env=env, timeout=300, cwd=tmp_path)
    assert "MISSING resnet50.d_in1k" in one.stdout and "1 of 1 model(s) not staged" in one.stderr
    bad = subprocess.run([sys.executable, script, "--models", "../x", "--check"], capture_output=True, text=True,
                         env=env, timeout=300, cwd=tmp_path)
    assert bad.returncode == 2 and "not a plain name" in bad.stderr


def test_stage8_reads_its_members_from_the_ensemble_csv(tmp_path, stage):
    from tests.helpers import make_duo_logits, write_set
    names = ("ResNet50", "resnet50.a1_in1k", "resnet50.a2_in1k")
    for pset in make_duo_logits(models=names, quality=(2.0, 1.9, 2.1), scale=(2.0, 2.0, 2.0)).values():
        write_set(pset, tmp_path / "predictions")
    members = tmp_path / "members.csv"
    members.write_text("model_name,source\n" + "".join(f"{n},timm\n" for n in names))
    code, out, err = stage("evaluate/8_evaluate_deep_ensemble.py", "--members_csv", members, "--predictions_dir",
                           tmp_path / "predictions", "--sizes", 2, 3, "--dataset", "synthetic", "--output_dir",
                           tmp_path / "results")
    assert code == 0, err
    rows = pd.read_csv(tmp_path / "results" / "evaluation_deep_ensemble_synthetic.csv", dtype={"subset": str})
    assert set(rows["model"]) == {"ResNet50"}                  # the common prefix in any case, spelt as the first
    assert sorted(rows.loc[(rows["m"] == 2) & (rows["uncertainty_type"] == "softmax_response") & ~rows["subset"].isin(
        ["mean", "std"]), "members"]) == sorted(["+".join(p) for p in
                                                 [names[:2], (names[0], names[2]), names[1:]]])
    code, _, err = stage("evaluate/8_evaluate_deep_ensemble.py", "--members_csv", members, "--members", "ResNet50",
                         "--output_dir", tmp_path / "results")
    assert code == 2 and "not both" in err


def test_report_on_hand_edited_results_says_what_it_leaves_out(results, stage, tmp_path):
    import re
    import shutil
    folder = tmp_path / "results"
    shutil.copytree(results[0] / "results", folder)
    path = folder / f"evaluation_duo_{DATASET}.csv"
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame.loc[0, "NLL"] = "nan"                                            # a hand-written missing value
    unknown = (frame["model_large"] == "EfficientNet_V2_L") & (frame["model_small"] == "ResNet18")
    frame.loc[unknown, ["gflops_small", "gflops_balance"]] = ""           # a sidekick no file gives a cost for
    frame.loc[unknown, "model_small"] = "ResNet18_custom"
    frame.to_csv(path, index=False)
    shutil.copy(folder / f"evaluation_single_model_{DATASET}.csv", folder / "evaluation_single_model_other.csv")
    code, out, err = stage("evaluate/9_make_report.py", "--results_dir", folder, "--dataset", DATASET,
                           "--laplace_balance", 0.5, 0.9)
    assert code == 0, err
    report = (folder / f"REPORT_{DATASET}.md").read_text()             # --dataset names the default report
    assert not re.search(r"\bnan\b", report, re.IGNORECASE)
    assert "1 duo(s) have no known FLOPs cost (EfficientNet_V2_L + ResNet18_custom" in report
    assert "| EfficientNet_V2_L + ResNet18_custom [asymmetric] | test | unknown |" in report
    assert "none of ConvNeXt_Base's duos has a FLOPs balance in (0.5, 0.9): the row is missing" in report
    # AD[7,8) keeps only duo 8 now that duo 10's cost is unknown
    assert "| AD[7,8) | [28,32) | 1 | 88.00 |" in report


def test_large_chooses_the_soup_figures(results, stage, tmp_path):
    folder, *_ = results
    code, out, err = stage("evaluate/9_make_report.py", "--results_dir", folder / "results", "--large", "ConvNeXt_Base",
                           "--output", tmp_path / "convnext.md")
    assert code == 0, err
    report = (tmp_path / "convnext.md").read_text()
    assert ("_Fig. 7 (duos on a model soup) skipped: no duos of a soup of ConvNeXt_Base (--large); the results have "
            "ResNet50_greedy._") in report
    assert "## Figs. 3-6: metrics against FLOPs balance (ConvNeXt_Base)" in report and "(EfficientNet_V2_L)" not in report


def test_a_member_that_is_the_base_under_another_name_is_no_second_checkpoint():
    """The official code's ensemble of FT trials holds the selected trial, whose results are the base's."""
    import pandas as pd

    from utils.report import paper_tables as pt

    def rows(name, nll):
        return [{"model": name, "wrapper": w, "uncertainty_type": "softmax_response", "split": "test", "Acc": 0.9,
                 "NLL": nll + (0.01 if w == "NoWrapper" else 0.0)} for w in ("NoWrapper", "TempScaleWrapper")]
    single = pd.DataFrame(rows("R", 0.30) + rows("R_trial0", 0.30) + rows("R_trial1", 0.35))
    ensembles = pd.DataFrame([{"model": "R", "m": 2, "subset": "0", "members": "R_trial0+R_trial1"}])
    assert pt.base_checkpoints(single, ensembles, "R") == ["R", "R_trial1"]
    single.loc[single["model"] == "R_trial0", "NLL"] += 1e-9           # any difference: a checkpoint of its own
    assert pt.base_checkpoints(single, ensembles, "R") == ["R", "R_trial0", "R_trial1"]
    seeds = pd.DataFrame([{"model": "R", "m": 2, "subset": "0", "members": "R+R_trial1"}])
    assert pt.base_checkpoints(single, seeds, "R") == ["R", "R_trial1"]
