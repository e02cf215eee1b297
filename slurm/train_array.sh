#!/bin/bash
# One backbone per array index, from configs/backbones.csv (row 1 = the first model).
#   sbatch --array=1-40 slurm/train_array.sh caltech256
# Each task runs the LP -> FT search of train/hp_tune.py on its GPU, then the soups. Tasks share
# checkpoints/<dataset>/optimal_hyperparams_*.csv safely (locked upserts; a better record is kept).
#SBATCH --job-name=duo-train
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=48G
#SBATCH --time=24:00:00
#SBATCH --output=logs/%x_%A_%a.out
set -euo pipefail
DATASET=${1:?usage: sbatch --array=1-N slurm/train_array.sh DATASET [extra hp_tune flags]}
shift
cd "${SLURM_SUBMIT_DIR:-.}"
export HF_HUB_OFFLINE=1            # compute nodes: weights come from the staged caches (TORCH_HOME, HF_HOME)
MODEL=$(python -c "import pandas as pd, sys; print(pd.read_csv('configs/backbones.csv').model_name.iloc[int(sys.argv[1]) - 1])" "${SLURM_ARRAY_TASK_ID}")
echo "task ${SLURM_ARRAY_TASK_ID}: ${MODEL} on ${DATASET}"
.venv/bin/python train/hp_tune.py --model "${MODEL}" --dataset "${DATASET}" --output_dir ./checkpoints \
    --cpus_per_trial 8 --gpus_per_trial 1 --resume "$@"
.venv/bin/python train/make_soup.py --model "${MODEL}" --dataset "${DATASET}" --output_dir ./checkpoints
