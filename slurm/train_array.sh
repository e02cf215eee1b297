#!/bin/bash
#SBATCH --job-name=duo-train
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=48G
#SBATCH --time=24:00:00
#SBATCH --output=logs/%x_%A_%a.out
#SBATCH --open-mode=append
# One backbone of configs/backbones.csv per array index (row 1 = index 1): the LP -> FT search of
# train/hp_tune.py with --resume (a requeued or time-limited task continues its search), then its soups.
#   bash slurm/train_array.sh caltech256 [hp_tune flags]     # creates logs/, submits one task per backbone
#   sbatch --array=1-40 slurm/train_array.sh caltech256       # the same, when logs/ exists
#   BACKBONE_CSV=my_backbones.csv bash slurm/train_array.sh caltech256   # your own list of backbones
# Run from the repository (or set DUOS_REPO); tasks share checkpoints/<dataset>/*.csv safely.
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"
export HF_HUB_OFFLINE=1      # compute nodes: weights come from the staged caches (TORCH_HOME, HF_HOME)
REPO=${DUOS_REPO:-$(pwd)}
PY="${DUOS_PYTHON:-$REPO/.venv/bin/python}"
CPUS="${SLURM_CPUS_PER_TASK:-1}"
if [ -n "${SLURM_JOB_ID:-}" ]; then export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$CPUS}"; fi
if [ $# -lt 1 ]; then echo "error: no dataset given: bash slurm/train_array.sh DATASET [extra hp_tune flags]" >&2; exit 2; fi
case "$1" in iwildcam|caltech256|imagenet|mnist5k) ;;
  *) echo "error: unknown dataset '$1' (known: iwildcam, caltech256, imagenet, mnist5k)" >&2; exit 2 ;;
esac
DATASET=$1
BACKBONES="${BACKBONE_CSV-$REPO/configs/backbones.csv}"   # relative: to the submit folder
if [ -z "${SLURM_JOB_ID:-}" ]; then      # run with bash: create logs/ and submit this script
  tasks=$("$PY" -m utils.cli.slurm backbones "$BACKBONES")
  if ! [ "$tasks" -gt 0 ] 2>/dev/null; then
    echo "error: no backbones (BACKBONE_CSV, default configs/backbones.csv) to submit (found ${tasks:-none}); see the lines above" >&2; exit 2
  fi
  mkdir -p logs
  exec sbatch --array=1-"$tasks" "$0" "$@"
fi
if [ -z "${SLURM_ARRAY_TASK_ID:-}" ]; then
  echo "error: not an array task (no SLURM_ARRAY_TASK_ID): submit this script with bash, which counts the tasks" >&2; exit 2
fi
shift
MODEL=$("$PY" -m utils.cli.slurm backbones "$BACKBONES" "$SLURM_ARRAY_TASK_ID")
echo "task ${SLURM_ARRAY_TASK_ID}: ${MODEL} on ${DATASET}"
"$PY" "$REPO/train/hp_tune.py" --model "$MODEL" --backbone_csv "$BACKBONES" --dataset "$DATASET" --output_dir ./checkpoints --cpus_per_trial "$CPUS" --gpus_per_trial 1 --resume "$@"
"$PY" "$REPO/train/make_soup.py" --model "$MODEL" --backbone_csv "$BACKBONES" --dataset "$DATASET" --output_dir ./checkpoints --num_workers "$CPUS"
