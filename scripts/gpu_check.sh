#!/usr/bin/env bash
# Acceptance check for a CUDA node, before the first cluster job: scripts/gpu_check.sh [--out DIR] [--steps N]
# One command, no network, a few minutes on one GPU (all visible GPUs are used for the ZeRO-3 run).
# Prints the environment, runs the CUDA-only tests, the bf16 benchmark and a fa2 + ZeRO-3 train / kill / resume run
# through llamafactory-cli; writes DIR/gpu_check.json and DIR/gpu_check.md (default DIR: gpu_check); exits 1 on any
# failure. See scripts/gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python scripts/gpu_check.py "$@"
