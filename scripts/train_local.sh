#!/usr/bin/env bash
# Single node, torchrun: scripts/train_local.sh RECIPE [GPUS] [key=value ...]
# Keeps GLOBAL_BATCH (default: the recipe's own accumulation), resumes from the last checkpoint, and first runs
# `videorope-train check-data` on the recipe's datasets (SKIP_DATA_CHECK=1 to skip; report in DATA_CHECK_DIR).
set -euo pipefail
recipe=${1:?recipe}; shift
if [[ ${1:-} =~ ^[0-9]+$ ]]; then gpus=$1; shift
else gpus=$(python -c 'import torch; print(max(torch.cuda.device_count(), 1))'); fi
plan=$(videorope-train launch-plan --nodes 1 --gpus-per-node "$gpus" ${GLOBAL_BATCH:+--global-batch "$GLOBAL_BATCH"} \
       "$recipe" "$@")
eval "$plan"
if [[ -z ${SKIP_DATA_CHECK:-} ]]; then  # every sample decoded and encoded as training will, before training
  videorope-train check-data --recipe "$recipe" --out "${DATA_CHECK_DIR:-data_check}" "$@"
fi
FORCE_TORCHRUN=1 NPROC_PER_NODE=$gpus exec llamafactory-cli train "$recipe" "${LF_OVERRIDES[@]}"
