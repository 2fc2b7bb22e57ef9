#!/usr/bin/env bash
# submit.sh RECIPE NODES [GPUS_PER_NODE] [sbatch flags ...] [-- key=value recipe overrides ...]
#   scripts/slurm/submit.sh recipes/videorope_sft.yaml 2 8 --partition=gpu --account=me
set -euo pipefail
recipe=${1:?recipe}; nodes=${2:?nodes}; gpus=${3:-8}; shift $(( $# < 3 ? $# : 3 ))
flags=(); while [[ $# -gt 0 && $1 != "--" ]]; do flags+=("$1"); shift; done; [[ ${1:-} == "--" ]] && shift
mkdir -p logs
if [[ -z ${SKIP_DATA_CHECK:-} ]]; then  # check the data here, not while the GPUs of the allocation wait
  videorope-train check-data --recipe "$recipe" --out "${DATA_CHECK_DIR:-logs/data_check}" "$@"
fi
gpu_flag=(); [[ $gpus -gt 0 && -z ${NO_GPU_GRES:-} ]] && gpu_flag=(--gpus-per-node="$gpus")
SKIP_DATA_CHECK=1 RECIPE=$recipe GPUS_PER_NODE=$gpus exec sbatch --nodes="$nodes" "${gpu_flag[@]}" "${flags[@]}" \
  "$(dirname "$0")/train.sbatch" "$@"
