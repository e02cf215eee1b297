"""The slurm scripts, shipped and generated, run by bash against stub `sbatch`, `srun` and `scontrol`.

The stub sbatch reads `#SBATCH` directives the way slurm does (only the comment block before the first
command) and records each job's resources, array range, dependency and output path, and whether the
output folder exists (slurm writes nothing at all when it does not)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from utils.cli import slurm
from utils.files import tables

STUB_SBATCH = r'''#!/usr/bin/env python3
import json, os, sys
args, script, rest = [], None, []
for a in sys.argv[1:]:
    if script is None and a.startswith("--"):
        args.append(a)
    elif script is None:
        script = a
    else:
        rest.append(a)
directives = {}
for line in open(script):
    line = line.strip()
    if line.startswith("#!") or not line:
        continue
    if not line.startswith("#"):
        break                                   # slurm stops reading directives at the first command
    if line.startswith("#SBATCH"):
        key, _, value = line[len("#SBATCH"):].strip().lstrip("-").partition("=")
        directives[key] = value
options = dict(a.lstrip("-").partition("=")[::2] for a in args)
output = options.get("output", directives.get("output", "slurm-%j.out"))
log = os.environ["STUB_LOG"]
count = sum(1 for _ in open(log)) if os.path.exists(log) else 0
record = {"tool": "sbatch", "script": script, "args": rest, "options": options, "directives": directives,
          "cwd": os.getcwd(), "output_dir_exists": os.path.isdir(os.path.dirname(output) or ".")}
with open(log, "a") as f:
    f.write(json.dumps(record) + "\n")
print(1000 + count)
'''

STUB_RECORDER = r'''#!/usr/bin/env python3
import json, os, subprocess, sys
argv = sys.argv[1:]
name = os.path.basename(sys.argv[0])
if name == "python" and argv[:1] == ["-c"]:
    sys.exit(subprocess.call([os.environ["REAL_PYTHON"], *argv]))
if name == "python" and argv[:1] == ["-"]:
    sys.stdin.read()
    print(os.environ.get("STUB_NODES_ALIVE", "2"))
    sys.exit(0)
if name == "scontrol":
    print("\n".join(os.environ.get("STUB_NODES", "node-a node-b").split()))
    sys.exit(0)
env = {k: os.environ[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "HF_HUB_OFFLINE") if k in os.environ}
with open(os.environ["STUB_LOG"], "a") as f:
    f.write(json.dumps({"tool": name, "argv": argv, "cwd": os.getcwd(), "env": env}) + "\n")
failing = os.environ.get("STUB_FAIL", "")
sys.exit(1 if failing and any(failing in a for a in argv) else 0)
'''


@pytest.fixture
def stubs(tmp_path):
    bin_dir = tmp_path / "stub bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(STUB_SBATCH)
    for name in ("srun", "scontrol", "python", "ray"):
        (bin_dir / name).write_text(STUB_RECORDER)
    for script in bin_dir.iterdir():
        script.chmod(0o755)
    log = tmp_path / "calls.jsonl"

    def run(script: Path, *args, cwd: Path, **env) -> subprocess.CompletedProcess:
        full_env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "STUB_LOG": str(log),
                    "REAL_PYTHON": sys.executable, **{k: str(v) for k, v in env.items()}}
        return subprocess.run(["bash", str(script), *map(str, args)], cwd=cwd, env=full_env, capture_output=True,
                              text=True, timeout=120)

    def calls(tool=None) -> list[dict]:
        records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        return [r for r in records if tool is None or r["tool"] == tool]
    run.calls, run.python = calls, bin_dir / "python"
    return run


def _job_env(stubs, **extra) -> dict:
    return {"SLURM_JOB_ID": 7, "SLURM_CPUS_PER_TASK": 6, "DUOS_REPO": REPO, "DUOS_PYTHON": stubs.python, **extra}


def _directives_ok(record: dict, job_name: str) -> None:
    directives = record["directives"]
    assert directives["job-name"] == job_name and directives["gres"].startswith("gpu:") and "time" in directives
    assert directives["output"].startswith("logs/") and record["output_dir_exists"]


def test_shipped_scripts_are_the_rendering(tmp_path):
    for name, render in slurm.SHIPPED.items():
        assert (REPO / "slurm" / name).read_text() == render(), f"run `python -m utils.cli.slurm` ({name} drifted)"


def test_shipped_train_array_submits_itself_and_trains_one_backbone(stubs, tmp_path):
    work = tmp_path / "my work"            # a folder with a space, outside the repository
    work.mkdir()
    result = stubs(REPO / "slurm" / "train_array.sh", "caltech256", "--epochs_ff", 2, cwd=work,
                   DUOS_REPO=REPO, DUOS_PYTHON=sys.executable)
    assert result.returncode == 0, result.stderr
    (submitted,) = stubs.calls("sbatch")
    count = len(tables.backbone_names(tables.read_backbones()))
    assert submitted["options"]["array"] == f"1-{count}" and submitted["args"] == ["caltech256", "--epochs_ff", "2"]
    _directives_ok(submitted, "duo-train")
    assert (work / "logs").is_dir()
    result = stubs(REPO / "slurm" / "train_array.sh", "caltech256", "--epochs_ff", 2, cwd=work,
                   **_job_env(stubs, SLURM_ARRAY_TASK_ID=2, SLURM_SUBMIT_DIR=work))
    assert result.returncode == 0, result.stderr
    hp, soup = [c["argv"] for c in stubs.calls("python")]
    second = tables.backbone_names(tables.read_backbones())[1]
    assert hp[0].endswith("train/hp_tune.py") and hp[hp.index("--model") + 1] == second
    assert hp[hp.index("--cpus_per_trial") + 1] == "6" and "--resume" in hp and hp[-2:] == ["--epochs_ff", "2"]
    assert soup[0].endswith("train/make_soup.py") and soup[soup.index("--model") + 1] == second


def test_shipped_predict_array_runs_one_checkpoint_per_task(stubs, tmp_path):
    ff = tmp_path / "checkpoints" / "iwildcam" / "ff"
    ff.mkdir(parents=True)
    for name in ("b.pth", "a b.pth", "c.pth"):
        (ff / name).write_bytes(b"")
    assert stubs(REPO / "slurm" / "predict_array.sh", "iwildcam", cwd=tmp_path, DUOS_PYTHON=sys.executable).returncode == 0
    (submitted,) = stubs.calls("sbatch")
    assert submitted["options"]["array"] == "1-3"
    _directives_ok(submitted, "duo-predict")
    result = stubs(REPO / "slurm" / "predict_array.sh", "iwildcam", cwd=tmp_path,
                   **_job_env(stubs, SLURM_ARRAY_TASK_ID=1, SLURM_SUBMIT_DIR=tmp_path))
    assert result.returncode == 0, result.stderr
    (predict,) = [c["argv"] for c in stubs.calls("python")]
    assert predict[predict.index("--model_path") + 1] == "checkpoints/iwildcam/ff/a b.pth"


def test_ray_cluster_waits_for_its_nodes_shares_a_token_and_stops_ray(stubs, tmp_path):
    assert stubs(REPO / "slurm" / "ray_cluster.sh", "--model", "ResNet50", cwd=tmp_path).returncode == 0
    (submitted,) = stubs.calls("sbatch")
    _directives_ok(submitted, "duo-ray")
    result = stubs(REPO / "slurm" / "ray_cluster.sh", "--model", "ResNet50", "--dataset", "iwildcam", cwd=tmp_path,
                   **_job_env(stubs, SLURM_JOB_NODELIST="node-[a-b]", SLURM_SUBMIT_DIR=tmp_path))
    assert result.returncode == 0, result.stderr
    starts = [c for c in stubs.calls("srun") if "start" in c["argv"]]
    assert any("--head" in c["argv"] for c in starts) and any("--address=node-a:6379" in c["argv"] for c in starts)
    (driver,) = [c for c in stubs.calls("python") if c["argv"][0].endswith("hp_tune.py")]
    assert driver["argv"][driver["argv"].index("--ray_address") + 1] == "node-a:6379"
    assert driver["env"]["RAY_AUTH_MODE"] == "token" and len(driver["env"]["RAY_AUTH_TOKEN"]) == 32
    assert all(c["env"].get("RAY_AUTH_TOKEN") == driver["env"]["RAY_AUTH_TOKEN"] for c in starts)
    assert any("stop" in c["argv"] for c in stubs.calls("srun"))          # the job's Ray processes end with it


def test_ray_cluster_fails_when_nodes_never_join(stubs, tmp_path):
    result = stubs(REPO / "slurm" / "ray_cluster.sh", "--model", "ResNet50", cwd=tmp_path,
                   **_job_env(stubs, SLURM_JOB_NODELIST="x", SLURM_SUBMIT_DIR=tmp_path, STUB_NODES_ALIVE=1,
                              STUB_NODES="node-a node-b node-c", RAY_WAIT_TRIES=2))
    assert result.returncode != 0 and "did not reach 3 node(s)" in result.stderr
    assert not [c for c in stubs.calls("python") if c["argv"][0].endswith("hp_tune.py")]
    assert any("stop" in c["argv"] for c in stubs.calls("srun"))


def _generate(tmp_path, config_name: str, output_root: str, **overrides) -> Path:
    config = yaml.safe_load((REPO / "configs" / config_name).read_text())
    config.update(overrides)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(config))
    result = subprocess.run([sys.executable, str(REPO / "evaluate" / "run_pipeline.py"), "--config", "p.yaml",
                             "--output_root", output_root, "--print_slurm"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return tmp_path / output_root / "slurm"


def test_generated_pipeline_scripts(stubs, tmp_path):
    folder = _generate(tmp_path, "pipeline_caltech256.yaml", "runs/cal 256")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = stubs(folder / "submit.sh", cwd=elsewhere)             # submit.sh works from any folder
    assert result.returncode == 0, result.stderr
    train, after = stubs.calls("sbatch")
    assert train["options"]["array"] == "1-40" and train["cwd"] == str(tmp_path)
    assert after["options"]["dependency"] == "afterany:1000" and after["cwd"] == str(tmp_path)
    _directives_ok(train, "duo-train")
    _directives_ok(after, "duo-eval")
    assert (tmp_path / "logs").is_dir()
    result = stubs(folder / "01_train_array.sh", cwd=tmp_path,
                   **_job_env(stubs, SLURM_ARRAY_TASK_ID=3, SLURM_SUBMIT_DIR=tmp_path))
    assert result.returncode == 0, result.stderr
    hp, soup = [c["argv"] for c in stubs.calls("python")]
    assert hp[hp.index("--output_dir") + 1] == "runs/cal 256/checkpoints"        # one argument, relative
    assert hp[hp.index("--cpus_per_trial") + 1] == "6" and "--resume" in hp
    assert soup[0].endswith("make_soup.py") and soup[soup.index("--model") + 1] == hp[hp.index("--model") + 1]
    assert "--backbone_csv" not in " ".join(Path(folder / "02_after_training.sh").read_text().split())
    before = len(stubs.calls("python"))
    result = stubs(folder / "02_after_training.sh", cwd=tmp_path,
                   **_job_env(stubs, SLURM_SUBMIT_DIR=tmp_path, STUB_FAIL="ivon_train.py"))
    ran = [Path(c["argv"][0]).name for c in stubs.calls("python")[before:]]
    assert result.returncode == 1 and "step failed" in result.stderr      # reported, and the rest still ran
    assert ran[:2] == ["1_single_model_prediction.py", "ivon_train.py"] and ran[-1] == "9_make_report.py"


def test_a_pipeline_without_training_submits_no_array(stubs, tmp_path):
    folder = _generate(tmp_path, "pipeline_imagenet.yaml", "runs/imagenet")
    assert not (folder / "01_train_array.sh").exists()
    assert stubs(folder / "submit.sh", cwd=tmp_path).returncode == 0
    (only,) = stubs.calls("sbatch")
    assert "dependency" not in only["options"] and "array" not in only["options"]
    _directives_ok(only, "duo-eval")
    predict = next(line for line in (folder / "02_after_training.sh").read_text().splitlines()
                   if "1_single_model_prediction.py" in line)
    assert "--ood_dir ./data/imagenetv2-matched-frequency" in predict and "--weights default" in predict
