"""The slurm scripts, shipped and generated, submitted to a real slurmctld + slurmd (tests/slurm_cluster.py).

On a machine without slurm these tests skip, saying how to install it; in CI (CI=true) they must run. What a
one-node cluster cannot show (a Ray cluster whose second node never joins) stays with a stub `srun`."""
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests import slurm_cluster
from tests.conftest import REPO
from utils.cli import slurm
from utils.files.prediction_io import read_predictions

pytestmark = pytest.mark.xdist_group("slurm")          # one cluster, one worker

TINY_HP = ["--source", "timm", "--weights", "none", "--image_size", "28", "--subset", "96", "--batch_size", "32",
           "--num_workers", "0", "--lp_samples", "1", "--epochs_lp", "1", "--epochs_ff", "1",
           "--gpus_per_trial", "0"]          # the test node has no GPU a program can use


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = slurm_cluster.missing()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    running = slurm_cluster.Cluster(tmp_path_factory.mktemp("slurm")).start()
    try:
        yield running
    finally:
        running.stop()


def submit(cluster, *command, cwd: Path, **env) -> str:
    """Run a script with bash as the README says (it submits itself); the id of the job it submitted."""
    result = subprocess.run(["bash", *map(str, command)], cwd=cwd, capture_output=True, text=True, timeout=120,
                            env={**cluster.env, "DUOS_PYTHON": sys.executable, "DUOS_REPO": str(REPO),
                                 **{k: str(v) for k, v in env.items()}})
    assert result.returncode == 0, result.stdout + result.stderr
    return re.search(r"Submitted batch job (\d+)", result.stdout).group(1)


def log_of(work: Path, name: str) -> str:
    path = work / "logs" / name
    return path.read_text() if path.exists() else ""


def test_shipped_scripts_are_the_rendering():
    for name, render in slurm.SHIPPED.items():
        assert (REPO / "slurm" / name).read_text() == render(), f"run `python -m utils.cli.slurm` ({name} drifted)"


@pytest.mark.slow
def test_train_array_requeue_and_predict_array(cluster, tmp_path):
    """One array task per backbone of the user's CSV trains and makes its soups; a task requeued in the middle of
    its FT search (as a preempted job is) continues it with --resume: every trial once, none lost; the predict
    array then writes one prediction file per checkpoint. Logs where the script's header says."""
    work = tmp_path / "my work"                       # the user's folder, with a space, outside the repository
    work.mkdir()
    (work / "backbones.csv").write_text("model_name,source,GFLOPS\nresnet10t,timm,0.02\nregnetx_002,timm,0.007\n")
    # the header's second form, `sbatch --array=...` with logs/ made: the command line's --cpus-per-task (2, this
    # machine's cores) overrides the script's 8, as on a cluster
    (work / "logs").mkdir()
    submitted = subprocess.run(["sbatch", "--array=1-2", "--cpus-per-task=2", str(REPO / "slurm" / "train_array.sh"),
                                "mnist5k", *TINY_HP, "--num_samples", "3"], cwd=work, capture_output=True, text=True,
                               env={**cluster.env, "DUOS_PYTHON": sys.executable, "DUOS_REPO": str(REPO),
                                    "BACKBONE_CSV": "backbones.csv"}, timeout=60)
    assert submitted.returncode == 0, submitted.stderr
    job = re.search(r"Submitted batch job (\d+)", submitted.stdout).group(1)
    first_log = f"duo-train_{job}_1.out"
    deadline = time.monotonic() + 300
    while "FF trial 00000:" not in log_of(work, first_log):
        states = {fields["JobState"] for fields in cluster.jobs(job).values()}
        assert time.monotonic() < deadline and states & {"PENDING", "RUNNING"}, log_of(work, first_log)
        time.sleep(0.5)
    requeue = subprocess.run(["scontrol", "requeue", f"{job}_1"], env=cluster.env, capture_output=True, text=True)
    assert requeue.returncode == 0, requeue.stderr
    # slurm holds a requeued job for a while before it may start again; as an administrator may, release it early,
    # but not in the second its old run was killed: slurmd refuses a credential made in the second it revoked the
    # job's ("Job credential revoked": the task ends FAILED, seen once here with StartTime=now)
    released = subprocess.run(["scontrol", "update", f"JobId={job}_1", "StartTime=now+3"], env=cluster.env,
                              capture_output=True, text=True)
    assert released.returncode == 0, released.stderr
    jobs = cluster.wait(job, timeout=600)
    log = log_of(work, first_log)
    assert {j["JobState"] for j in jobs.values()} == {"COMPLETED"}, (jobs, log, log_of(work, f"duo-train_{job}_2.out"))
    assert jobs[f"{job}_1"]["Restarts"] == "1"
    # the log keeps both runs of the requeued task (--open-mode=append): the interrupted one, then the resumed one
    assert log.count("task 1: resnet10t on mnist5k") == 2 and "resuming the FF search" in log, log
    trials = pd.read_csv(work / "checkpoints" / "mnist5k" / "soup" / "resnet10t_trials.csv")
    assert len(trials) == 3 and trials["trial"].is_unique
    assert log.count("FF trial 00000:") == 1                    # the finished trial was not trained again
    ff = work / "checkpoints" / "mnist5k" / "ff"            # each backbone's FT checkpoint and its two soups
    models = [f"{name}{soup}" for name in ("regnetx_002", "resnet10t") for soup in ("", "_greedy", "_uniform")]
    assert sorted(p.name[:-4] for p in ff.glob("*.pth")) == models

    job = submit(cluster, REPO / "slurm" / "predict_array.sh", "mnist5k", cwd=work)
    jobs = cluster.wait(job, timeout=300)
    assert {j["JobState"] for j in jobs.values()} == {"COMPLETED"}, log_of(work, f"duo-predict_{job}_1.out")
    predictions = work / "predictions" / "mnist5k"
    assert sorted(p.name[:-4] for p in predictions.glob("*.npz") if ".features" not in p.name) == models
    assert set(read_predictions(predictions / "resnet10t.npz").splits) >= {"val", "test"}


@pytest.mark.slow
def test_generated_pipeline_runs_under_slurm_and_names_a_failed_backbone(cluster, tmp_path):
    """`run_pipeline.py --print_slurm`, then `bash <output_root>/slurm/submit.sh` from another folder: the training
    array, then (afterany) the evaluation on the backbones that finished, to a report; the backbone that failed
    is named, and the evaluation job fails at its end to say something did."""
    config = yaml.safe_load((REPO / "configs" / "pipeline_mnist5k.yaml").read_text())
    config.pop("corruptions", None)
    # soups are left to the requeue test above (train_array.sh makes them): here one FT trial is enough
    config.update(sidekicks=["regnetx_002", "mobilenetv3_small_050"], bootstrap=0, slurm={"gpus": 0, "cpus": 2},   # this machine
                  train={**config["train"], "num_samples": 1},
                  stages=["train", "predict", "temp_scale", "duo_temp_scale", "evaluate", "evaluate_duo", "report"])
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(config))
    made = subprocess.run([sys.executable, str(REPO / "evaluate" / "run_pipeline.py"), "--config", "pipeline.yaml",
                           "--output_root", "runs/demo", "--tiny", "--print_slurm"], cwd=tmp_path, env=cluster.env,
                          capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # one backbone made to fail: the jobs' Python refuses to train mobilenetv3_small_050 (as a crash would)
    failing = tmp_path / "python"
    failing.write_text(f'#!/bin/bash\ncase "$*" in *hp_tune.py*mobilenetv3_small_050*) echo "made to fail" >&2; exit 3 ;; esac\n'
                       f'exec {sys.executable} "$@"\n')
    failing.chmod(0o755)
    submitted = subprocess.run(["bash", str(tmp_path / "runs" / "demo" / "slurm" / "submit.sh")], cwd=elsewhere,
                               env={**cluster.env, "DUOS_PYTHON": str(failing)}, capture_output=True, text=True,
                               timeout=60)
    assert submitted.returncode == 0, submitted.stderr
    train = re.search(r"Submitted the training array: job (\d+)", submitted.stdout).group(1)
    evaluation = re.search(r"Submitted batch job (\d+)", submitted.stdout).group(1)
    assert cluster.jobs(evaluation)[evaluation]["Dependency"] == f"afterany:{train}_*(unfulfilled)"
    tasks = cluster.wait(train, timeout=600)
    states = {task: fields["JobState"] for task, fields in tasks.items()}
    assert sorted(states.values()) == ["COMPLETED", "COMPLETED", "FAILED"], states
    done = cluster.wait(evaluation, timeout=600)[evaluation]
    eval_log = log_of(tmp_path, f"duo-eval_{evaluation}.out")
    assert done["JobState"] == "FAILED" and done["ExitCode"] == "1:0", eval_log
    report = (tmp_path / "runs" / "demo" / "results" / "REPORT.md").read_text()
    assert "regnetx_002" in report and "mobilenetv3_small_050" not in report.split("## ")[1:2][0], report
    assert "backbone mobilenetv3_small_050: no trained checkpoint" in eval_log and "array task 3" in eval_log, eval_log


@pytest.mark.slow
def test_ray_cluster_script_runs_the_search_on_the_cluster_it_starts(cluster, tmp_path):
    port = slurm_cluster.free_ports(1)[0]
    job = submit(cluster, REPO / "slurm" / "ray_cluster.sh", "--model", "resnet10t", "--dataset", "mnist5k", *TINY_HP,
                 "--num_samples", 1, "--cpus_per_trial", 1, "--output_dir", "checkpoints",
                 cwd=tmp_path, NODES=1, RAY_PORT=port)
    done = cluster.wait(job, timeout=300)[job]
    log = log_of(tmp_path, f"duo-ray_{job}.out")
    assert done["JobState"] == "COMPLETED", log
    assert "Connected to Ray cluster" in log and "Started a local Ray instance" not in log, log
    assert (tmp_path / "checkpoints" / "mnist5k" / "ff" / "resnet10t.pth").is_file()
    leftover = subprocess.run(["pgrep", "-af", f"[:=]{port}( |$)"], capture_output=True, text=True).stdout
    assert leftover == "", f"Ray processes of the job still run:\n{leftover}"
    # the head's address file outlives it; a later search on this node still starts a Ray of its own
    after = subprocess.run([sys.executable, "-c", "import ray; from train import tuning; tuning.connect(None, 1); "
                            "print(ray.cluster_resources()['CPU'])"], capture_output=True, text=True, timeout=120)
    assert after.returncode == 0 and after.stdout.split()[-1] == "1.0", after.stderr[-2000:]


def test_a_pipeline_without_training_submits_one_job(cluster, tmp_path):
    config = yaml.safe_load((REPO / "configs" / "pipeline_imagenet.yaml").read_text())
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(config))
    made = subprocess.run([sys.executable, str(REPO / "evaluate" / "run_pipeline.py"), "--config", "p.yaml",
                           "--output_root", "runs/imagenet", "--print_slurm"], cwd=tmp_path, env=cluster.env,
                          capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr
    folder = tmp_path / "runs" / "imagenet" / "slurm"
    assert not (folder / "01_train_array.sh").exists()
    submitted = subprocess.run(["bash", str(folder / "submit.sh")], cwd=tmp_path, env=cluster.env,
                               capture_output=True, text=True, timeout=60)
    assert submitted.returncode == 0, submitted.stderr
    job = re.search(r"Submitted batch job (\d+)", submitted.stdout).group(1)
    fields = cluster.jobs(job)[job]
    subprocess.run(["scancel", job], env=cluster.env)
    assert fields["Dependency"] == "(null)" and "ArrayTaskId" not in fields
    assert fields["JobName"] == "duo-eval" and fields["StdOut"] == str(tmp_path / "logs" / f"duo-eval_{job}.out")


# ----------------------------------------------------------------------------- what one node cannot show

STUB = r'''#!/usr/bin/env python3
import json, os, sys
name, argv = os.path.basename(sys.argv[0]), sys.argv[1:]
if name == "python" and argv[:1] == ["-"]:
    sys.stdin.read(); print(1); sys.exit(0)                  # the head sees one node alive, never three
if name == "python":
    os.execv(os.environ["REAL_PYTHON"], [os.environ["REAL_PYTHON"], *argv])
if name == "scontrol":
    print("node-a\nnode-b\nnode-c"); sys.exit(0)
with open(os.environ["STUB_LOG"], "a") as f:
    f.write(json.dumps({"tool": name, "argv": argv}) + "\n")
'''


def test_ray_cluster_fails_when_nodes_never_join(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("srun", "scontrol", "python", "ray"):
        (bin_dir / name).write_text(STUB)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "calls.jsonl"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "STUB_LOG": str(log), "REAL_PYTHON": sys.executable,
           "SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "node-[a-c]", "SLURM_SUBMIT_DIR": str(tmp_path),
           "DUOS_REPO": str(REPO), "DUOS_PYTHON": str(bin_dir / "python"), "RAY_WAIT_TRIES": "2"}
    result = subprocess.run(["bash", str(REPO / "slurm" / "ray_cluster.sh"), "--model", "ResNet50"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "did not reach 3 node(s)" in result.stderr
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    started = [c["argv"] for c in calls if c["tool"] == "srun"]
    assert len(started) == 3 and all(argv[-1] == "--block" for argv in started)         # the head and two workers
    assert not any("stop" in c["argv"] for c in calls)              # never `ray stop`: it kills other jobs' Ray too


def test_a_script_with_nothing_to_submit_is_one_error_and_submits_nothing(tmp_path):
    """A missing BACKBONE_CSV, or no checkpoints: one error line, and sbatch is never called (a stub sbatch that
    records its calls stands in: no cluster is needed to show it is not reached)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f"#!/bin/bash\necho called >> {tmp_path / 'sbatch_calls'}\n")
    (bin_dir / "sbatch").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "DUOS_REPO": str(REPO), "DUOS_PYTHON": sys.executable}
    (tmp_path / "twice.csv").write_text("model_name,source\nresnet10t,timm\nResNet10t,timm\n")
    for script, extra, dataset, says in (
            ("train_array.sh", {"BACKBONE_CSV": "missing.csv"}, "mnist5k", "missing.csv"),
            ("train_array.sh", {"BACKBONE_CSV": ""}, "mnist5k", "error: "),          # empty: no silent default
            ("train_array.sh", {"BACKBONE_CSV": "twice.csv"}, "mnist5k", "two rows for backbone ResNet10t"),
            ("train_array.sh", {}, "caltech265", "unknown dataset 'caltech265'"),
            ("train_array.sh", {}, "$(touch PWNED)", "unknown dataset"),
            ("predict_array.sh", {}, "mnist5k", "no checkpoints (checkpoints/mnist5k/ff/*.pth) to submit (found 0)"),
            ("train_array.sh", {"SLURM_JOB_ID": "7"}, "mnist5k", "not an array task"),   # sbatch without --array
            ("predict_array.sh", {"SLURM_JOB_ID": "7", "SLURM_ARRAY_TASK_ID": "3"}, "mnist5k", "no checkpoint number 3")):
        result = subprocess.run(["bash", str(REPO / "slurm" / script), dataset], cwd=tmp_path, capture_output=True,
                                text=True, env={**env, **extra}, timeout=120)
        last = result.stderr.strip().splitlines()[-1]
        assert result.returncode == 2 and last.startswith("error: ") and says in last, (script, extra, result.stderr)
        assert "Traceback" not in result.stderr and "see the lines above" not in result.stderr.splitlines()[0]
    assert not (tmp_path / "PWNED").exists()
    assert not (tmp_path / "sbatch_calls").exists() and not (tmp_path / "logs").exists()


def test_a_job_runs_with_its_cpus_as_threads_and_the_submitting_shell_exports_none(tmp_path):
    """torch's threads follow the job's CPUs (OMP_NUM_THREADS, unless the user set it); the submitting shell must
    not set it, or sbatch would pass it on to the job. (The test session sets OMP_NUM_THREADS=1: removed here.)"""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    (bin_dir / "sbatch").write_text(f'#!/bin/bash\necho "sbatch ${{OMP_NUM_THREADS-unset}}" >> {calls}\n')
    (bin_dir / "python").write_text(f'#!/bin/bash\ncase "$*" in *utils.cli.slurm*) exec {sys.executable} "$@" ;; esac\n'
                                    f'echo "$(basename "$1") ${{OMP_NUM_THREADS-unset}}" >> {calls}\n')
    for stub in bin_dir.iterdir():
        stub.chmod(0o755)
    (tmp_path / "backbones.csv").write_text("model_name,source,GFLOPS\nresnet10t,timm,0.02\n")
    base = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS" and not k.startswith("SLURM_")}
    base.update(PATH=f"{bin_dir}:{os.environ['PATH']}", DUOS_REPO=str(REPO), DUOS_PYTHON=str(bin_dir / "python"),
                BACKBONE_CSV="backbones.csv")
    job = {"SLURM_JOB_ID": "7", "SLURM_ARRAY_TASK_ID": "1", "SLURM_CPUS_PER_TASK": "6", "SLURM_SUBMIT_DIR": str(tmp_path)}
    script = str(REPO / "slurm" / "train_array.sh")
    for env, expected in (({}, ["sbatch unset"]), (job, ["hp_tune.py 6", "make_soup.py 6"]),
                          ({**job, "OMP_NUM_THREADS": "3"}, ["hp_tune.py 3", "make_soup.py 3"])):
        calls.unlink(missing_ok=True)
        result = subprocess.run(["bash", script, "mnist5k"], cwd=tmp_path, env={**base, **env}, capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert calls.read_text().split("\n")[:-1] == expected, (env, calls.read_text())
    for name in ("train_array.sh", "predict_array.sh"):                   # no dataset: one error line
        result = subprocess.run(["bash", str(REPO / "slurm" / name)], cwd=tmp_path, env=base, capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 2 and result.stderr.startswith("error: no dataset given: bash slurm/"), result.stderr
