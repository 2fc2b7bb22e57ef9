#!/usr/bin/env bash
# Acceptance check for a cluster node with the pinned stack installed, before the first cluster job:
#   scripts/gpu_check.sh [--out DIR] [--deadline SECONDS] [--steps N]
# The same parts as scripts/device_check.sh (scripts/device_check.py), with every visible GPU for the training runs
# and the installed flash-attn; writes DIR/device_check.json and DIR/device_check.md (default DIR: gpu_check).
set -euo pipefail
cd "$(dirname "$0")/.."
exec python scripts/device_check.py --cluster --out gpu_check "$@"
