"""Slurm job scripts, from one source: the shipped `slurm/*_array.sh` and `run_pipeline.py --print_slurm`.

Rules every script follows: `#SBATCH` directives come first (sbatch stops reading them at the first
command); output goes to `logs/`, which the submitting side creates (slurm drops a job's output
silently when the folder is missing: a script run with `bash` instead of `sbatch` creates it and
submits itself); every path is quoted; CPUs come from the job's allocation (`SLURM_CPUS_PER_TASK`).
`python -m utils.cli.slurm` rewrites the shipped scripts; a test checks they equal this rendering.
"""
from __future__ import annotations

import shlex
from pathlib import Path

from utils.files import safe_io
from utils.paths import REPO_ROOT

RESOURCES = {
    "train": {"gres": "gpu:1", "cpus-per-task": 8, "mem": "48G", "time": "24:00:00"},
    "predict": {"gres": "gpu:1", "cpus-per-task": 8, "mem": "32G", "time": "4:00:00"},
    "evaluate": {"gres": "gpu:1", "cpus-per-task": 8, "mem": "64G", "time": "12:00:00"},
    "ray": {"gres": "gpu:4", "ntasks-per-node": 1, "cpus-per-task": 32, "time": "24:00:00"},
}


def quote(value) -> str:
    return shlex.quote(str(value))


def header(job_name: str, kind: str, array: bool, comment: str, resources: dict | None = None) -> str:
    """`resources` override RESOURCES[kind] (a None value drops the directive, e.g. gres on a CPU partition)."""
    chosen = {**RESOURCES[kind], **(resources or {})}
    directives = [f"#SBATCH --job-name={job_name}"] + [f"#SBATCH --{k}={v}" for k, v in chosen.items() if v is not None]
    directives.append(f"#SBATCH --output=logs/%x_{'%A_%a' if array else '%j'}.out")
    directives.append("#SBATCH --open-mode=append")      # a requeued job's second run must not erase the first's log
    lines = ["#!/bin/bash", *directives, *(f"# {line}".rstrip() for line in comment.strip().splitlines())]
    return "\n".join(lines) + "\n"


def prelude(repo: str = "$(pwd)") -> str:
    """Shell after the directives: strict mode, the submit folder, offline hubs, the project's Python
    (`repo`: a shell word naming the repository; DUOS_REPO overrides it)."""
    return ("set -euo pipefail\n"
            'cd "${SLURM_SUBMIT_DIR:-.}"\n'
            "export HF_HUB_OFFLINE=1      # compute nodes: weights come from the staged caches (TORCH_HOME, HF_HOME)\n"
            f"REPO=${{DUOS_REPO:-{repo}}}\n"
            'PY="${DUOS_PYTHON:-$REPO/.venv/bin/python}"\n'
            'CPUS="${SLURM_CPUS_PER_TASK:-1}"\n'
            # torch starts a thread per core of the node, not of the allocation: jobs sharing a node without
            # cgroups then oversubscribe it (on the test cluster, next to another run: 540 s against 152 s with
            # one thread). Only inside the job: sbatch passes the submitting shell's environment on.
            'if [ -n "${SLURM_JOB_ID:-}" ]; then export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$CPUS}"; fi\n')


def self_submit(array_size: str, what: str, counted_by_us: bool = True) -> str:
    """`bash script.sh ARGS` outside a job: count the array's tasks (a failing count, or none, is an error before
    anything is submitted), create logs/ and submit this script with sbatch; inside the job, an array task id."""
    above = "; see the lines above" if counted_by_us else ""      # our counter prints its own error line first
    return ('if [ -z "${SLURM_JOB_ID:-}" ]; then      # run with bash: create logs/ and submit this script\n'
            f"  tasks={array_size}\n"
            '  if ! [ "$tasks" -gt 0 ] 2>/dev/null; then\n'
            f'    echo "error: no {what} to submit (found ${{tasks:-none}}){above}" >&2; exit 2\n'
            "  fi\n"
            "  mkdir -p logs\n"
            '  exec sbatch --array=1-"$tasks" "$0" "$@"\n'
            "fi\n"
            'if [ -z "${SLURM_ARRAY_TASK_ID:-}" ]; then\n'
            '  echo "error: not an array task (no SLURM_ARRAY_TASK_ID): submit this script with bash, which counts '
            'the tasks" >&2; exit 2\n'
            "fi\n")


def command(script: str, args: list) -> str:
    """One stage call: `"$PY" "$REPO/<script>" args...` with every argument quoted (`$CPUS` expands)."""
    rendered = [a if a == '"$CPUS"' else quote(a) for a in map(str, args)]      # the job's CPUs expand
    return " ".join(['"$PY"', f'"$REPO/{script}"', *rendered])


# ----------------------------------------------------------------------------- the shipped scripts

_BACKBONE_OF_TASK = '"$PY" -m utils.cli.slurm backbones "$BACKBONES" "$SLURM_ARRAY_TASK_ID"'
_BACKBONE_COUNT = '$("$PY" -m utils.cli.slurm backbones "$BACKBONES")'
_CHECKPOINTS = '(find "checkpoints/$DATASET/ff" -maxdepth 1 -name "*.pth" 2>/dev/null || true)'   # none: empty


def _dataset_argument(usage: str) -> str:
    """The first argument, a dataset the stages know: checked before anything is submitted."""
    from utils.cli.config import DATASETS
    return ('if [ $# -lt 1 ]; then echo "error: no dataset given: bash slurm/' + usage + '" >&2; exit 2; fi\n'
            f'case "$1" in {"|".join(DATASETS)}) ;;\n'
            f'  *) echo "error: unknown dataset \'$1\' (known: {", ".join(DATASETS)})" >&2; exit 2 ;;\nesac\n'
            'DATASET=$1\n')


def shipped_train_array() -> str:
    return (header("duo-train", "train", True, """
One backbone of configs/backbones.csv per array index (row 1 = index 1): the LP -> FT search of
train/hp_tune.py with --resume (a requeued or time-limited task continues its search), then its soups.
  bash slurm/train_array.sh caltech256 [hp_tune flags]     # creates logs/, submits one task per backbone
  sbatch --array=1-40 slurm/train_array.sh caltech256       # the same, when logs/ exists
  BACKBONE_CSV=my_backbones.csv bash slurm/train_array.sh caltech256   # your own list of backbones
Run from the repository (or set DUOS_REPO); tasks share checkpoints/<dataset>/*.csv safely.""")
            + prelude() + _dataset_argument("train_array.sh DATASET [extra hp_tune flags]")
            + 'BACKBONES="${BACKBONE_CSV-$REPO/configs/backbones.csv}"   # relative: to the submit folder\n'
            + self_submit(_BACKBONE_COUNT, "backbones (BACKBONE_CSV, default configs/backbones.csv)") + "shift\n"
            + f"MODEL=$({_BACKBONE_OF_TASK})\n"
            + 'echo "task ${SLURM_ARRAY_TASK_ID}: ${MODEL} on ${DATASET}"\n'
            + command("train/hp_tune.py", ["--model"]) + ' "$MODEL" --backbone_csv "$BACKBONES" --dataset "$DATASET" '
            + '--output_dir ./checkpoints --cpus_per_trial "$CPUS" --gpus_per_trial 1 --resume "$@"\n'
            + command("train/make_soup.py", ["--model"]) + ' "$MODEL" --backbone_csv "$BACKBONES" --dataset "$DATASET" '
            + '--output_dir ./checkpoints --num_workers "$CPUS"\n')


def shipped_predict_array() -> str:
    return (header("duo-predict", "predict", True, """
Stage 1 for one trained checkpoint per array index (every *.pth of checkpoints/<dataset>/ff, sorted). A
complete prediction file from the same checkpoint is reused, so a resubmitted array redoes only what is
missing or stale.
  bash slurm/predict_array.sh caltech256      # creates logs/, submits one task per checkpoint""")
            + prelude()
            + _dataset_argument("predict_array.sh DATASET")
            + self_submit(f'$( {_CHECKPOINTS} | wc -l)', 'checkpoints (checkpoints/$DATASET/ff/*.pth)',
                          counted_by_us=False)
            + f'CHECKPOINT=$( {_CHECKPOINTS} | sort | sed -n "${{SLURM_ARRAY_TASK_ID}}p")\n'
            + 'if [ -z "$CHECKPOINT" ]; then\n'
            + '  echo "error: no checkpoint number $SLURM_ARRAY_TASK_ID in checkpoints/$DATASET/ff (array larger than '
            + 'its checkpoints)" >&2; exit 2\n'
            + 'fi\n'
            + command("evaluate/1_single_model_prediction.py", ["--model_path"]) + ' "$CHECKPOINT" --dataset "$DATASET" '
            + '--output_dir "./predictions/$DATASET" --features --num_workers "$CPUS"\n')


def shipped_ray_cluster() -> str:
    return header("duo-ray", "ray", False, _RAY_CLUSTER_COMMENT) + _RAY_CLUSTER_BODY


_RAY_CLUSTER_COMMENT = """
A Ray cluster across the nodes of one slurm allocation; hp_tune joins it and Ray spreads the trials
over every GPU of every node. Trial results go to --output_dir (default ./checkpoints), which must be on
the filesystem every node shares.
  bash slurm/ray_cluster.sh --model ConvNeXt_Base --dataset iwildcam --num_samples 12   # creates logs/, submits
  sbatch --nodes=4 slurm/ray_cluster.sh --model ConvNeXt_Base --dataset iwildcam       # when logs/ exists
Token authentication: head, workers and driver share one token (RAY_AUTH_MODE=token, RAY_AUTH_TOKEN)."""

_RAY_CLUSTER_BODY = r'''set -euo pipefail
if [ -z "${SLURM_JOB_ID:-}" ]; then      # run with bash: create logs/ and submit this script
  mkdir -p logs
  exec sbatch --nodes="${NODES:-2}" "$0" "$@"
fi
cd "${SLURM_SUBMIT_DIR:-.}"
export HF_HUB_OFFLINE=1
REPO=${DUOS_REPO:-$(pwd)}
PY="${DUOS_PYTHON:-$REPO/.venv/bin/python}"
RAY="$(dirname "$PY")/ray"
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN="${RAY_AUTH_TOKEN:-$("$PY" -c 'import secrets; print(secrets.token_hex(16))')}"
mapfile -t nodes < <(scontrol show hostnames "${SLURM_JOB_NODELIST}")
head_node=${nodes[0]}
port=${RAY_PORT:-6379}
address="${head_node}:${port}"
cpus="${SLURM_CPUS_PER_TASK:-1}"

# The Ray processes this job started end with it, whatever way it ends, and only those: `ray start --block` stops
# the processes it started when it is signalled (srun forwards the signal to its task on each node), whereas
# `ray stop` would also kill every other Ray of this user on the node (another job's, a notebook's).
stop_ray() {
  for pid in "${starters[@]:-}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${starters[@]:-}"; do wait "$pid" 2>/dev/null || true; done
}
starters=()
trap stop_ray EXIT

wait_for_nodes() {      # instead of fixed sleeps: poll until the head sees every node (at most 5 minutes)
  local wanted=$1
  for _ in $(seq 1 "${RAY_WAIT_TRIES:-150}"); do
    alive=$("$PY" - "$address" <<'EOF' 2>/dev/null || echo 0
import sys, ray
ray.init(address=sys.argv[1], log_to_driver=False, logging_level="ERROR")
print(sum(node["Alive"] for node in ray.nodes()))
EOF
)
    if [ "${alive:-0}" -ge "$wanted" ]; then return 0; fi
    sleep 2
  done
  echo "error: the Ray cluster at ${address} did not reach ${wanted} node(s)" >&2
  return 1
}

srun --nodes=1 --ntasks=1 -w "$head_node" "$RAY" start --head --port="$port" --num-cpus="$cpus" --block &
starters+=($!)
wait_for_nodes 1
for node in "${nodes[@]:1}"; do
  srun --nodes=1 --ntasks=1 -w "$node" "$RAY" start --address="$address" --num-cpus="$cpus" --block &
  starters+=($!)
done
wait_for_nodes "${#nodes[@]}"
"$PY" "$REPO/train/hp_tune.py" --ray_address "$address" --cpus_per_trial 8 --gpus_per_trial 1 --resume "$@"
'''

SHIPPED = {"train_array.sh": shipped_train_array, "predict_array.sh": shipped_predict_array,
           "ray_cluster.sh": shipped_ray_cluster}


def write_shipped(folder: Path = REPO_ROOT / "slurm") -> list[Path]:
    written = []
    for name, render in SHIPPED.items():
        safe_io.write_text(folder / name, render())
        written.append(folder / name)
    return written


# ----------------------------------------------------------------------------- a pipeline's scripts

def pipeline_scripts(train_tasks: list[list[tuple[str, list]]], after: list[tuple[str, list]], back_to_submit_dir: str,
                     repo: Path = REPO_ROOT, resources: dict | None = None,
                     trained: list[tuple[str, Path]] = ()) -> dict[str, str]:
    """The scripts of `run_pipeline.py --print_slurm`: an array with one task per trained backbone (its
    steps in order), the evaluation after it, and submit.sh. `back_to_submit_dir` leads from the
    slurm folder to the folder the run's relative paths start from."""
    scripts = {}
    if train_tasks:
        cases = "".join(f"  {i})\n" + "".join(f"    {command(s, a)}\n" for s, a in steps) + "    ;;\n"
                        for i, steps in enumerate(train_tasks, start=1))
        scripts["01_train_array.sh"] = (
            header("duo-train", "train", True, "One trained backbone per array index: hp_tune (--resume), then its soups.",
                   resources)
            + prelude(quote(repo))
            + f'case "${{SLURM_ARRAY_TASK_ID:?run with sbatch --array=1-{len(train_tasks)}}}" in\n{cases}'
            + '  *) echo "no task ${SLURM_ARRAY_TASK_ID}" >&2; exit 2 ;;\nesac\n')
    scripts["02_after_training.sh"] = (
        header("duo-eval", "evaluate", False, """
Everything after training, on the backbones that finished: a failed step is reported and the others still
run; the job fails at the end if any step failed.""", resources)
        + prelude(quote(repo))
        + 'failed=0\nstep() { "$@" || { echo "step failed (exit $?): $*" >&2; failed=1; }; }\n'
        + ('untrained() {    # array task $1 left no checkpoint: name it, go on without it, fail at the end\n'
           '  echo "backbone $2: no trained checkpoint at $3: its training (array task $1, logs/duo-train_*_$1.out) '
           'failed; evaluating the others" >&2; failed=1\n}\n' if trained else "")
        + "".join(f"[ -f {quote(path)} ] || untrained {i} {quote(name)} {quote(path)}\n"
                  for i, (name, path) in enumerate(trained, start=1))
        + "".join(f"step {command(s, a)}\n" for s, a in after) + 'exit "$failed"\n')
    submit = ("#!/bin/bash\n# Submits the pipeline's jobs from the folder its relative paths start from; run it from "
              "anywhere.\nset -euo pipefail\n"
              'slurm_dir=$(cd "$(dirname "$0")" && pwd)\n'
              f'cd "$slurm_dir"/{quote(back_to_submit_dir)}\n'
              "mkdir -p logs                 # slurm writes no output at all when the folder is missing\n")
    if train_tasks:
        submit += (f'train=$(sbatch --parsable --array=1-{len(train_tasks)} "$slurm_dir/01_train_array.sh")\n'
                   'echo "Submitted the training array: job $train"\n'
                   "# afterany: evaluation runs on whatever finished; a failed backbone is skipped, not blocking\n"
                   'sbatch --dependency=afterany:"$train" "$slurm_dir/02_after_training.sh"\n')
    else:
        submit += 'sbatch "$slurm_dir/02_after_training.sh"\n'
    scripts["submit.sh"] = submit
    return scripts


def backbones_main(argv: list[str]) -> int:
    """`python -m utils.cli.slurm backbones CSV [N]`: how many backbones CSV lists, or the N-th's name (1-based);
    what train_array.sh asks, with a one-line error for a missing or malformed CSV."""
    from utils.cli.parsing import UserError, run_main
    from utils.files import tables

    def main_impl(args) -> int:
        names = tables.backbone_names(tables.read_backbones(args[0]))
        if len(args) == 1:
            print(len(names))
        elif not args[1].isdigit() or not 1 <= int(args[1]) <= len(names):
            raise UserError(f"{args[0]}: no backbone number {args[1]} (it lists {len(names)})")
        else:
            print(names[int(args[1]) - 1])
        return 0
    return run_main(main_impl, argv)


if __name__ == "__main__":
    import sys
    if sys.argv[1:2] == ["backbones"] and len(sys.argv) in (3, 4):
        sys.exit(backbones_main(sys.argv[2:]))
    for path in write_shipped():
        print(f"wrote {path}")
