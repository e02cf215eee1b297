"""The documented commands run as written: docs/reproduction.md in order, from a working folder outside the
repository, on tiny iWildCam and Caltech-256 trees in the real layouts; the README's numpy-API block; and the
README's quickstart commands parse with their scripts' own parsers.

The commands are read from the documents themselves, so the documents and the code cannot drift: every fenced
bash block of docs/reproduction.md runs, except blocks marked as needing the internet; the only changes are the
ones the page tells a user to make (the script's full path when running outside the repository, and the page's
own quick-run flags).
"""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests import dataset_trees
from tests.conftest import OUTPUT_FOLDERS, REPO
from utils.maths.duo_modes import MODES
from utils.maths.uncertainty_metrics import UNCERTAINTY_TYPES

REPRODUCTION = REPO / "docs" / "reproduction.md"
SKIP_MARK = "<!-- not run by the tests:"
QUICK_MARK = "<!-- quick-run flags:"
COMMAND = re.compile(r"\bpython (\S+\.py)\b")


def fenced_blocks(text: str) -> list[tuple[str, str, str]]:
    """(language, body, the line just above the opening fence) for every fenced block."""
    lines, blocks, i = text.splitlines(), [], 0
    while i < len(lines):
        if lines[i].startswith("```"):
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            blocks.append((lines[i][3:].strip(), "\n".join(lines[i + 1:end]), lines[i - 1] if i else ""))
            i = end + 1
        else:
            i += 1
    return blocks


def quick_flags(blocks) -> dict[str, str]:
    [body] = [body for _, body, above in blocks if above.startswith(QUICK_MARK)]
    return dict(line.split(None, 1) for line in body.splitlines() if line.strip())


def as_run_elsewhere(body: str, flags: dict[str, str]) -> str:
    """The block with continuation lines joined, each script called by its full path, and its
    quick-run flags appended (before a trailing comment)."""
    out = []
    for line in body.replace("\\\n", " ").splitlines():
        match = COMMAND.search(line)
        if match:
            script = match.group(1)
            assert (REPO / script).is_file(), f"README names {script}, which does not exist"
            command = line.partition(" # ")[0].rstrip()          # the trailing comment goes
            command = command.replace(f"python {script}", f"python {shlex.quote(str(REPO / script))}", 1)
            line = f"{command} {flags.get(script, '')}".rstrip()
        out.append(line)
    return "\n".join(out)


def readme_scripts(readme: str) -> tuple[list[str], list[str]]:
    """A bash script per runnable block of the section, and the blocks marked as not run."""
    blocks = fenced_blocks(readme)
    flags = quick_flags(blocks)
    skipped = [body for lang, body, above in blocks if lang == "bash" and above.startswith(SKIP_MARK)]
    runnable = [body for lang, body, above in blocks if lang == "bash" and not above.startswith(SKIP_MARK)]
    return ["set -euo pipefail\nset -x\n" + as_run_elsewhere(body, flags) + "\n" for body in runnable], skipped


def test_readme_script_extraction():
    scripts, skipped = readme_scripts(REPRODUCTION.read_text())
    # only the weight-staging blocks are exempt (they download; the second also needs ImageNet); the rest runs
    assert len(skipped) == 2 and all("download_imagenet_models.py" in block for block in skipped)
    assert len(scripts) == 2 and "--dataset iwildcam" in scripts[0] and "--dataset caltech256" in scripts[1]
    assert f"python {REPO / 'train/hp_tune.py'} --model $model --dataset iwildcam" in scripts[0]
    for script in scripts:
        assert "--weights none" in script and "python train/" not in script and "python evaluate/" not in script


def repository_outputs() -> set[str]:
    names = (*OUTPUT_FOLDERS, "data", "my_duos.csv")
    return {name for name in names if (REPO / name).exists()}


@pytest.mark.slow
def test_readme_reproduction_runs_as_written(tmp_path):
    work = tmp_path / "work"                     # a researcher's own folder, outside the repository
    dataset_trees.make_iwildcam(work / "data")
    dataset_trees.make_caltech256(work / "data", per_class=35)    # a test split of 21: enough for the paired bootstrap
    scripts, _ = readme_scripts(REPRODUCTION.read_text())
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "HF_HUB_OFFLINE": "1"}
    before = repository_outputs()
    # The two blocks (the iWildCam experiment, the Caltech-256 baselines) share no inputs: they run at the
    # same time, each in order, as two jobs of a cluster would, sharing ./checkpoints and ./results.
    jobs = [subprocess.Popen(["bash", "-c", script], cwd=work, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for script in scripts]
    outputs = [job.communicate(timeout=1500) for job in jobs]
    for job, (_, err) in zip(jobs, outputs):
        assert job.returncode == 0, f"a command of docs/reproduction.md failed:\n{err[-6000:]}"
    stdout = "".join(out for out, _ in outputs)
    assert repository_outputs() == before, "a documented command wrote into the repository instead of the working folder"

    # one identity per model, spelt as configs/backbones.csv, whatever case the commands used
    predictions = work / "predictions"
    expected = {"ConvNeXt_Base", "ConvNeXt_Base_greedy", "ConvNeXt_Base_uniform", "EfficientNet_B0"}
    assert {p.name[:-4] for p in predictions.glob("*.npz") if not p.name.endswith(".features.npz")} == expected
    assert (work / "checkpoints" / "ConvNeXt_Base_best.pth").is_file()
    temperatures = pd.read_csv(work / "calibrated" / "temperature_single_model.csv")
    assert sorted(temperatures.full_name) == sorted(expected)

    # every pair of the hand-written duos CSV (any spelling) was fitted and evaluated in every mode
    weights = pd.read_csv(work / "calibrated" / "temperature_duo.csv")
    pairs = {("ConvNeXt_Base", "EfficientNet_B0"), ("ConvNeXt_Base_greedy", "EfficientNet_B0")}
    assert set(zip(weights.model_large, weights.model_small)) == pairs
    for suffix in ("", "_ood"):
        duos = pd.read_csv(work / "results" / f"evaluation_duo_iwildcam{suffix}.csv")
        assert set(zip(duos.model_large, duos.model_small)) == pairs
        assert len(duos) == len(pairs) * len(MODES) * len(UNCERTAINTY_TYPES)
        assert duos.gflops_large.notna().all() and duos.gflops_balance.between(0, 1).all()
        assert len(pd.read_csv(work / "results" / f"evaluation_dynamic_duo_iwildcam{suffix}.csv")) >= len(pairs)
        cascade = pd.read_csv(work / "results" / f"evaluation_cascade_iwildcam{suffix}.csv")   # configs/duos.csv's pair
        assert set(zip(cascade.model_large, cascade.model_small)) == {("ConvNeXt_Base", "EfficientNet_B0")}
        assert sorted(cascade.target[cascade.selection == "val_budget"].unique()) == [1.1, 1.2]
    report = (work / "results" / "REPORT.md").read_text()
    assert report.startswith("# Asymmetric duos report: iwildcam") and "ConvNeXt_Base (temp-scaled)" in report
    assert (work / "results" / "iwildcam_fig3-6_ConvNeXt_Base.png").is_file()
    assert "## Which option at which compute? (Pareto front, beyond the paper)" in report
    assert (work / "results" / "iwildcam_pareto.png").is_file()
    assert "_Fig. 1 (radar) skipped: no asymmetric duo with FLOPs balance in [0.1, 0.2]" in report   # FB 0.025 only
    caltech_report = (work / "results" / "REPORT_caltech256.md").read_text()
    for line in ("## Table 3: duos vs IVON (ResNet50)", "| IVON (4 samples) | 2 |", "## Table 4: duos vs Laplace (Swin_V2_S)",
                 "| Swin_V2_S LA | 1 |"):
        assert line in caltech_report, line

    # the Caltech-256 baselines: IVON, Laplace and a deep ensemble of seeds (features files left out)
    caltech = work / "predictions" / "caltech256"
    for name in ("ResNet50", "ResNet50_s1", "Swin_V2_S", "ResNet50_ivon", "ResNet50_ivon_det", "Swin_V2_S_LA"):
        assert (caltech / f"{name}.npz").is_file(), name
    single = pd.read_csv(work / "results" / "evaluation_single_model_caltech256.csv")
    assert {"ResNet50_ivon", "Swin_V2_S_LA"} <= set(single.model)
    ensembles = pd.read_csv(work / "results" / "evaluation_deep_ensemble_caltech256.csv", dtype={"subset": str})
    first = ensembles[ensembles.subset == "0"]
    assert set(first.members[first.model == "ResNet50"]) == {"ResNet50+ResNet50_s1"}
    # the official code's ensemble of the FT trials, compared with the selected model by the bootstrap
    assert set(first.members[first.model == "ResNet50_trials"]) == {"ResNet50_trial0+ResNet50_trial1"}
    deltas = pd.read_csv(work / "results" / "evaluation_deep_ensemble_delta_caltech256.csv")
    assert set(deltas.base[deltas.model == "ResNet50_trials"]) == {"ResNet50"}
    assert "left out 1 features file" in stdout


API_MARK = "<!-- run by tests/test_readme.py with val_*/test_* arrays"


def test_readme_numpy_api_block_runs_as_written(tmp_path):
    """The README's numpy-API block, run from a folder outside the repository on two models' probabilities."""
    section = (REPO / "README.md").read_text()
    [body] = [body for lang, body, above in fenced_blocks(section) if lang == "python" and above.startswith(API_MARK)]
    prelude = ("import numpy as np\nfrom scipy.special import softmax\nfrom tests.helpers import make_duo_logits\n"
               "sets = make_duo_logits(num_classes=5)\n"
               "p = {m: {s: softmax(d.logits, axis=1) for s, d in sets[m].splits.items()} for m in sets}\n"
               "val_large, val_small, test_large, test_small = p['large']['val'], p['small']['val'], "
               "p['large']['test'], p['small']['test']\n"
               "val_labels, test_labels = sets['large'].splits['val'].labels, sets['large'].splits['test'].labels\n")
    check = ("\nassert out['probs'].shape == test_large.shape and len(results) and len(gains)\n"
             "print(gains[(gains['mode'] == 'asymmetric') & (gains['metric'] == 'NLL')].iloc[0].to_dict())\n")
    script = tmp_path / "own.py"
    script.write_text(prelude + body + check)
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    assert "'delta'" in result.stdout and "'ci_low'" in result.stdout


def test_readme_quickstart_commands_parse_with_their_scripts():
    """The README's stage sequence (run in full, with data, by the reproduction test): each command's flags exist and
    their values parse."""
    import importlib
    readme = (REPO / "README.md").read_text()
    [body] = [body for lang, body, _ in fenced_blocks(readme.split("## The stages", 1)[1].split("\n## ", 1)[0])
              if lang == "bash"]
    commands = [line.partition(" # ")[0].split() for line in body.splitlines() if line.startswith("python ")]
    assert len(commands) == 8
    for _, script, *args in commands:
        parser = importlib.import_module(script[:-3].replace("/", ".")).build_parser()
        parser.parse_args(args)                         # an unknown flag or a bad value exits 2
