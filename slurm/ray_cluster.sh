#!/bin/bash
#SBATCH --job-name=duo-ray
#SBATCH --gres=gpu:4
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --output=logs/%x_%j.out
#SBATCH --open-mode=append
# A Ray cluster across the nodes of one slurm allocation; hp_tune joins it and Ray spreads the trials
# over every GPU of every node. Trial results go to --output_dir (default ./checkpoints), which must be on
# the filesystem every node shares.
#   bash slurm/ray_cluster.sh --model ConvNeXt_Base --dataset iwildcam --num_samples 12   # creates logs/, submits
#   sbatch --nodes=4 slurm/ray_cluster.sh --model ConvNeXt_Base --dataset iwildcam       # when logs/ exists
# Token authentication: head, workers and driver share one token (RAY_AUTH_MODE=token, RAY_AUTH_TOKEN).
set -euo pipefail
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
