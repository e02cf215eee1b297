"""The demo pipeline end to end at a tiny size, and its slurm rendering."""
import importlib

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from tests.conftest import REPO, run_cli
from utils.files.prediction_io import read_predictions

pipeline = importlib.import_module("evaluate.run_pipeline")


# one corruption at two severities (a severity curve still): each corrupted split adds predictions, evaluations
# and bootstrap work to every stage; the demo's 3 x 3 sweep took this test from 150 s to 195 s alone
TINY_CORRUPTIONS = {"names": ["gaussian_noise"], "severities": [1, 5]}


def tiny_config(tmp_path):
    config = yaml.safe_load((REPO / "configs" / "pipeline_mnist5k.yaml").read_text())
    config.update(sidekicks=config["sidekicks"][-1:], deep_ensemble={**config["deep_ensemble"], "subsets": 2},
                  ivon={**config["ivon"], "test_samples": 2, "mc_samples": [2], "repeats": 2}, bootstrap=200,
                  corruptions=TINY_CORRUPTIONS)
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_demo_pipeline_tiny(tmp_path, ray_session, capsys):
    root = tmp_path / "demo"
    args = ["--config", tiny_config(tmp_path), "--output_root", root, "--tiny"]
    assert pipeline.main([str(a) for a in args]) == 0
    out = capsys.readouterr().out
    assert "pipeline finished" in out and "| resnet10t (temp-scaled) | test |" in out
    # with a core to spare, the sidekick's search ran in its own process (side by side with any other); its
    # trial lines reach the screen either way
    from utils.pipeline.plan import Plan
    from utils.pipeline.schema import load_pipeline
    side_by_side = Plan(load_pipeline(str(args[1]))[0], root, True).side_by_side() > 1
    assert ("hp_tune regnetx_002 ... (side by side)" in out) == side_by_side
    assert "    regnetx_002 FF trial 00000: lr" in out
    predictions = root / "predictions"
    expected = {"resnet10t", "resnet10t_trial0", "resnet10t_trial1", "resnet10t_greedy", "resnet10t_uniform",
                "regnetx_002", "resnet10t_ivon", "resnet10t_ivon_det", "resnet10t_LA", "resnet10t_ivon_mc2_r0",
                "resnet10t_ivon_mc2_r1"}
    assert {p.name[:-4] for p in predictions.glob("*.npz")} == expected
    # the deep ensemble of the two FT trials (the official code's), one of which is the large model
    trials = [read_predictions(predictions / f"resnet10t_trial{i}.npz").splits["test"].logits for i in (0, 1)]
    large = read_predictions(predictions / "resnet10t.npz").splits["test"].logits
    assert any(np.array_equal(large, t) for t in trials) and not np.array_equal(*trials)
    ensemble = pd.read_csv(root / "results" / "evaluation_deep_ensemble_mnist5k.csv", dtype={"subset": str})
    assert set(ensemble["members"]) >= {"resnet10t_trial0+resnet10t_trial1"}
    sweep = {f"c_{name}_{severity}" for name in TINY_CORRUPTIONS["names"] for severity in TINY_CORRUPTIONS["severities"]}
    for path in predictions.glob("*.npz"):
        pset = read_predictions(path)
        swept = path.stem in ("resnet10t", "resnet10t_greedy", "resnet10t_uniform", "regnetx_002")   # stage 1's first step
        assert set(pset.splits) == {"val", "test", "ood_test"} | (sweep if swept else set()) and pset.num_classes == 10
    for name in ("temperature_single_model.csv", "temperature_duo.csv"):
        assert len(pd.read_csv(root / "calibrated" / name)) > 0
    results = root / "results"
    for kind in ("single_model", "duo", "deep_ensemble"):
        for suffix in ("", "_ood"):
            frame = pd.read_csv(results / f"evaluation_{kind}_mnist5k{suffix}.csv", dtype={"subset": str})
            if "subset" in frame:                      # the std over a single subset is NaN by definition
                frame = frame[frame["subset"] != "std"]
            assert len(frame) > 0 and np.isfinite(frame["NLL"]).all()
    duos = pd.read_csv(results / "evaluation_duo_mnist5k.csv")
    assert set(duos.model_small) == {"regnetx_002"} and (duos.gflops_balance < 1).all()
    assert set(duos.model_large) == {"resnet10t", "resnet10t_greedy"}        # Fig. 7: the soup as f_large
    report = (results / "REPORT.md").read_text()
    for title in ("Table 1", "Table 2", "Table 3: duos vs IVON (resnet10t)", "Table 4: duos vs Laplace (resnet10t)"):
        assert f"## {title}" in report, title
    assert "| IVON (2 samples) | 2 |" in report and "skipped" not in report       # every table and figure
    for heading in ("Under corruption: the duo's gain against severity (beyond the paper): resnet10t",
                    "Corruption errors, relative to the TS large model (mCE-style): resnet10t", "Shift detection: resnet10t"):
        assert f"## {heading}" in report, heading
    deltas = pd.read_csv(results / "evaluation_duo_delta_mnist5k.csv")            # the demo's bootstrap
    assert set(deltas["B"]) == {200} and "| resnet10t + regnetx_002 |" in report.split("## Paired bootstrap")[1]
    for name in ("fig1_radar", "fig2_single_models", "fig3-6_resnet10t", "fig7_resnet10t_greedy",
                 "fig10_temperature_ratio", "curves_resnet10t"):
        assert f"mnist5k_{name}.png" in report
        with Image.open(results / f"mnist5k_{name}.png") as image:
            assert image.size[0] > 300 and image.size[1] > 300
    # a rerun on finished outputs reuses every step: the finished expensive ones (2 trainings, the soup, IVON
    # trained and its repeated draws, Laplace) and the evaluation steps, whose files are as the run left them
    written = {p: p.stat().st_mtime_ns for p in results.iterdir()}
    assert pipeline.main([str(a) for a in args]) == 0
    rerun = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert len(rerun) == 15 and all("reused:" in line for line in rerun), rerun
    assert sum("nothing it reads or writes changed" in line for line in rerun) == 9
    assert {p: p.stat().st_mtime_ns for p in results.iterdir()} == written


def test_imagenet_pipeline_runs_locally_without_training(tmp_path):
    """configs/pipeline_imagenet.yaml on a tiny ImageNet val + V2 tree: pretrained-head models (random
    init here, two small backbones) predict val/test/ood_test, then calibration, duos and the report."""
    from tests import dataset_trees
    data, v2 = dataset_trees.make_imagenet(tmp_path / "data")
    (tmp_path / "bb.csv").write_text("model_name,source,tv_weights,GFLOPS,Params\n"
                                     "MNASNet1_0,torchvision,IMAGENET1K_V1,0.31,4.4\n"
                                     "ShuffleNet_V2_X0_5,torchvision,IMAGENET1K_V1,0.04,1.4\n")
    (tmp_path / "duos.csv").write_text("model_large,model_small\nMNASNet1_0,ShuffleNet_V2_X0_5\n")
    config = yaml.safe_load((REPO / "configs" / "pipeline_imagenet.yaml").read_text())
    config.update(data_dir=str(data), ood_dir=str(v2), weights="none", image_size=32, large="MNASNet1_0",
                  duos_csv=str(tmp_path / "duos.csv"), backbone_csv=str(tmp_path / "bb.csv"))
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(config))
    # as a user runs it: the screen holds a start and an end line per step and the results table; each step's
    # full output (its command line first) is in its log
    result = run_cli("evaluate/run_pipeline.py", "--config", tmp_path / "p.yaml", "--output_root", tmp_path / "run",
                     env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "hp_tune.py" not in out and "6_laplace.py" not in out
    steps = [line for line in out.splitlines() if line.startswith("[")]
    assert len(steps) == 2 * 7 and steps[0].startswith("[ 1/7 predict") and "1_single_model_prediction" in steps[0]
    assert "wrote" in steps[-3] and "cascade point(s)" in steps[-3]           # stage 7's end line
    assert "| MNASNet1_0 (temp-scaled) | test |" in out and "pipeline finished" in out
    assert "evaluated test" not in out and not result.stderr.strip()     # the stages' own lines stay in the logs
    logs = sorted((tmp_path / "run" / "logs").glob("*.log"))
    assert [p.name for p in logs][:2] == ["01_predict.log", "02_temp_scale.log"] and len(logs) == 7
    first = logs[0].read_text()
    assert first.startswith("python evaluate/1_single_model_prediction.py") and "ShuffleNet_V2_X0_5" in first
    pset = read_predictions(tmp_path / "run" / "predictions" / "ShuffleNet_V2_X0_5.npz")
    assert set(pset.splits) == {"val", "test", "ood_test"} and pset.num_classes == 1000
    duo = pd.read_csv(tmp_path / "run" / "results" / "evaluation_duo_imagenet_ood.csv")
    assert set(duo.model_small) == {"ShuffleNet_V2_X0_5"} and duo.gflops_large.iloc[0] == 0.31
    assert (tmp_path / "run" / "results" / "REPORT.md").exists()
    # a rerun: nothing changed, every step is reused and the screen still ends with the results table; a file
    # touched without a change keeps them reused; an edited duos CSV reruns the steps that read it and those
    # whose folders its steps rewrite (stage 4 reads calibrated/, where stage 3 writes)
    command = ["evaluate/run_pipeline.py", "--config", tmp_path / "p.yaml", "--output_root", tmp_path / "run"]
    report = tmp_path / "run" / "results" / "REPORT.md"
    written = report.stat().st_mtime_ns
    (tmp_path / "run" / "predictions" / "MNASNet1_0.npz").touch()
    rerun = run_cli(*command, env={"HF_HUB_OFFLINE": "1"})
    steps = [line for line in rerun.stdout.splitlines() if line.startswith("[")]
    assert rerun.returncode == 0 and len(steps) == 7 and all("reused: nothing it reads" in s for s in steps), steps
    assert "| MNASNet1_0 (temp-scaled) | test |" in rerun.stdout and report.stat().st_mtime_ns == written
    (tmp_path / "duos.csv").write_text("model_large,model_small\nMNASNet1_0,ShuffleNet_V2_X0_5\n"
                                       "ShuffleNet_V2_X0_5,MNASNet1_0\n")
    rerun = run_cli(*command, env={"HF_HUB_OFFLINE": "1"})
    reused = [line.split("]")[0] for line in rerun.stdout.splitlines() if "reused: nothing" in line]
    assert rerun.returncode == 0 and [s.split()[-1] for s in reused] == ["predict", "temp_scale"], rerun.stdout
    duo = pd.read_csv(tmp_path / "run" / "results" / "evaluation_duo_imagenet.csv")
    assert set(duo.model_large) == {"MNASNet1_0", "ShuffleNet_V2_X0_5"}
    rerun = run_cli(*command, "--refresh", env={"HF_HUB_OFFLINE": "1"})
    assert rerun.returncode == 0 and "reused: nothing" not in rerun.stdout and "wrote" in rerun.stdout


def test_side_by_side_steps_run_at_once_and_a_failure_names_its_log(tmp_path, capsys, monkeypatch):
    """run_pipeline's side-by-side searches (each in its own process): every step runs to its end, each
    one's `show` lines reach the screen, and a failing one stops the pipeline naming its log."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.yaml").write_text("dataset: mnist5k\nlarge: resnet18\nstages: [report]\n")
    from utils.pipeline.plan import Step
    from utils.pipeline.runner import run_side_by_side
    script = "evaluate/run_pipeline.py"
    good = ("[ 1/2 train]", tmp_path / "logs" / "01_good.log",
            Step("train", ["--config", "p.yaml", "--print_slurm", "--output_root", "run"], script=script))
    bad = ("[ 2/2 train]", tmp_path / "logs" / "02_bad.log", Step("train", ["--config", "missing.yaml"], script=script))
    with pytest.raises(pipeline.UserError, match=r"stage 'run_pipeline' failed \(exit 2\) \(its full output: .*02_bad.log\)"):
        run_side_by_side([good, bad], 2, verbose=False)
    out, err = capsys.readouterr()
    assert "[ 1/2 train] run_pipeline ... (side by side)" in out and "[ 2/2 train] run_pipeline ... (side by side)" in out
    assert "[ 1/2 train] wrote run/slurm/" in out                              # the good one's end line
    assert "missing.yaml" in err and (tmp_path / "run" / "slurm").is_dir()
    assert (tmp_path / "logs" / "02_bad.log").read_text().startswith("python evaluate/run_pipeline.py --config missing.yaml")
    assert not list((tmp_path / "logs").glob("*.screen"))
    # after a failure no further search starts; a utils/ package in the working folder is not ours
    (tmp_path / "utils").mkdir()
    (tmp_path / "utils" / "__init__.py").write_text("raise SystemExit('not the project')\n")
    third = ("[ 3/3 train]", tmp_path / "logs" / "03_third.log", *good[2:])
    with pytest.raises(pipeline.UserError, match=r"02_bad.log\).*\(1 other search\(es\) not started\)"):
        run_side_by_side([bad, third], 1, verbose=False)
    assert not (tmp_path / "logs" / "03_third.log").exists()
    run_side_by_side([third], 1, verbose=False)
    assert "[ 3/3 train] wrote run/slurm/" in capsys.readouterr().out


def test_a_model_that_cannot_run_at_the_image_size_is_one_error_line(tmp_path):
    config = yaml.safe_load((REPO / "configs" / "pipeline_mnist5k.yaml").read_text())
    config.update(sidekicks=["vit_tiny_patch16_224"])                   # built for 224 px; the demo runs at 28
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(config))
    result = run_cli("evaluate/run_pipeline.py", "--config", "p.yaml", "--output_root", "runs/x", "--print_slurm",
                     cwd=tmp_path)
    assert result.returncode != 0 and result.stderr.startswith("error: --config: vit_tiny_patch16_224: ")
    assert "28 px" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not [p for p in (tmp_path / "runs").rglob("*") if p.is_file()]          # nothing written


def test_a_misspelt_corruption_is_refused_before_any_training(tmp_path):
    config = yaml.safe_load((REPO / "configs" / "pipeline_mnist5k.yaml").read_text())
    config["corruptions"] = {"names": ["gaussian_noise", "fog"], "severities": [1, 3]}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(config))
    result = run_cli("evaluate/run_pipeline.py", "--config", "p.yaml", "--output_root", "runs/x", cwd=tmp_path)
    assert result.returncode != 0 and result.stderr.startswith("error: ") and "fog" in result.stderr
    assert not [p for p in (tmp_path / "runs").rglob("*") if p.is_file()]
