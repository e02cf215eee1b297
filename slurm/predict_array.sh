#!/bin/bash
#SBATCH --job-name=duo-predict
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=4:00:00
#SBATCH --output=logs/%x_%A_%a.out
#SBATCH --open-mode=append
# Stage 1 for one trained checkpoint per array index (every *.pth of checkpoints/<dataset>/ff, sorted). A
# complete prediction file from the same checkpoint is reused, so a resubmitted array redoes only what is
# missing or stale.
#   bash slurm/predict_array.sh caltech256      # creates logs/, submits one task per checkpoint
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"
export HF_HUB_OFFLINE=1      # compute nodes: weights come from the staged caches (TORCH_HOME, HF_HOME)
REPO=${DUOS_REPO:-$(pwd)}
PY="${DUOS_PYTHON:-$REPO/.venv/bin/python}"
CPUS="${SLURM_CPUS_PER_TASK:-1}"
if [ -n "${SLURM_JOB_ID:-}" ]; then export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$CPUS}"; fi
if [ $# -lt 1 ]; then echo "error: no dataset given: bash slurm/predict_array.sh DATASET" >&2; exit 2; fi
case "$1" in iwildcam|caltech256|imagenet|mnist5k) ;;
  *) echo "error: unknown dataset '$1' (known: iwildcam, caltech256, imagenet, mnist5k)" >&2; exit 2 ;;
esac
DATASET=$1
if [ -z "${SLURM_JOB_ID:-}" ]; then      # run with bash: create logs/ and submit this script
  tasks=$( (find "checkpoints/$DATASET/ff" -maxdepth 1 -name "*.pth" 2>/dev/null || true) | wc -l)
  if ! [ "$tasks" -gt 0 ] 2>/dev/null; then
    echo "error: no checkpoints (checkpoints/$DATASET/ff/*.pth) to submit (found ${tasks:-none})" >&2; exit 2
  fi
  mkdir -p logs
  exec sbatch --array=1-"$tasks" "$0" "$@"
fi
if [ -z "${SLURM_ARRAY_TASK_ID:-}" ]; then
  echo "error: not an array task (no SLURM_ARRAY_TASK_ID): submit this script with bash, which counts the tasks" >&2; exit 2
fi
CHECKPOINT=$( (find "checkpoints/$DATASET/ff" -maxdepth 1 -name "*.pth" 2>/dev/null || true) | sort | sed -n "${SLURM_ARRAY_TASK_ID}p")
if [ -z "$CHECKPOINT" ]; then
  echo "error: no checkpoint number $SLURM_ARRAY_TASK_ID in checkpoints/$DATASET/ff (array larger than its checkpoints)" >&2; exit 2
fi
"$PY" "$REPO/evaluate/1_single_model_prediction.py" --model_path "$CHECKPOINT" --dataset "$DATASET" --output_dir "./predictions/$DATASET" --features --num_workers "$CPUS"
