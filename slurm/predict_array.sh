#!/bin/bash
# Stage 1 for one trained checkpoint per array index (every *.pth of checkpoints/<dataset>/ff, sorted).
#   sbatch --array=1-$(ls checkpoints/caltech256/ff/*.pth | wc -l) slurm/predict_array.sh caltech256
# A complete prediction file from the same checkpoint is reused, so a re-submitted array only redoes
# what is missing or stale.
#SBATCH --job-name=duo-predict
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=4:00:00
#SBATCH --output=logs/%x_%A_%a.out
set -euo pipefail
DATASET=${1:?usage: sbatch --array=1-N slurm/predict_array.sh DATASET}
cd "${SLURM_SUBMIT_DIR:-.}"
export HF_HUB_OFFLINE=1
CHECKPOINT=$(ls checkpoints/"${DATASET}"/ff/*.pth | sort | sed -n "${SLURM_ARRAY_TASK_ID}p")
.venv/bin/python evaluate/1_single_model_prediction.py --model_path "${CHECKPOINT}" --dataset "${DATASET}" \
    --output_dir "./predictions/${DATASET}" --features --num_workers 8
