#!/usr/bin/env bash
# The support window's high end, installed as the README says: a fresh venv, the tested set, then LLaMA-Factory's
# main branch with transformers 5.8.0 and the tested torch named in the same command, then this package; `pip check`
# must be clean and torch must stay the tested one.  Usage: scripts/check_lf_main.sh [LF_SOURCE] [VENV]
# LF_SOURCE: a pip requirement or a local checkout (default: the GitHub main branch).  Takes minutes, ~8 GB.
set -euo pipefail
cd "$(dirname "$0")/.."
LF_SOURCE=${1:-"llamafactory @ git+https://github.com/hiyouga/LLaMA-Factory.git"}
VENV=${2:-work_dirs/lf-main-check}
TORCH=$(grep -E '^torch==' requirements.txt | sed 's/ *#.*//')
TORCHVISION=$(grep -E '^torchvision==' requirements.txt | sed 's/ *#.*//')
TORCHAUDIO=$(grep -E '^torchaudio==' requirements.txt | sed 's/ *#.*//')
NEWEST=$(sed -n 's/^NEWEST_TRANSFORMERS := //p' Makefile)
rm -rf "$VENV"
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q -r requirements.txt
"$VENV/bin/pip" install -q "$LF_SOURCE" "transformers==$NEWEST" "$TORCH" "$TORCHVISION" "$TORCHAUDIO"
"$VENV/bin/pip" install -q -e .
"$VENV/bin/pip" check
"$VENV/bin/python" - "$TORCH" <<'PY'
import sys, torch, transformers, llamafactory, videorope_train.hook  # the import gate accepts the stack
expected = sys.argv[1].split("==")[1]
assert torch.__version__.split("+")[0] == expected, f"torch {torch.__version__} replaced the tested {expected}"
print(f"high end OK: torch {torch.__version__}, transformers {transformers.__version__}, "
      f"LLaMA-Factory {llamafactory.__version__}; pip check clean")
PY
