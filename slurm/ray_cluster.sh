#!/bin/bash
# A Ray cluster across the nodes of one slurm allocation; hp_tune joins it with --ray_address auto
# and Ray spreads the trials over every GPU.
#   sbatch --nodes=4 slurm/ray_cluster.sh --model ConvNeXt_Base --dataset iwildcam --num_samples 12
#SBATCH --job-name=duo-ray
#SBATCH --gres=gpu:4
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --output=logs/%x_%j.out
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"
export HF_HUB_OFFLINE=1
nodes=($(scontrol show hostnames "${SLURM_JOB_NODELIST}"))
head=${nodes[0]}
port=6379
srun --nodes=1 --ntasks=1 -w "${head}" .venv/bin/ray start --head --port=${port} --block &
sleep 20
for node in "${nodes[@]:1}"; do
  srun --nodes=1 --ntasks=1 -w "${node}" .venv/bin/ray start --address="${head}:${port}" --block &
done
sleep 20
RAY_ADDRESS="${head}:${port}" .venv/bin/python train/hp_tune.py --ray_address auto --cpus_per_trial 8 --gpus_per_trial 1 "$@"
