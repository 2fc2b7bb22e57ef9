#!/usr/bin/env bash
# The GPU check for a bare, offline CUDA machine (the device tool's H200): one command, in parts, within a deadline.
#   scripts/device_check.sh [--wheels DIR] [--out DIR] [--deadline SECONDS] [--smoke] [--parts NAME ...]
# --wheels DIR (what `make device-wheels` wrote, carried to the machine): installed with pip --target into
# work_dirs/device-site, put first on PYTHONPATH with src/ and tools/torch_flash_attn (flash-attn 2's API on torch's
# own FA2 kernels); `videorope-train` and the wheels' scripts (llamafactory-cli) go on PATH.  Without --wheels the
# installed environment is used as it is (a venv with the pinned set; --smoke on CPU).  Everything else, and the
# reports OUT/device_check.json and OUT/device_check.md, is scripts/device_check.py's.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-$(command -v python3 || command -v python)}
wheels=""
args=()
while (($#)); do
  case $1 in
    --wheels) wheels=${2:?--wheels DIR}; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
site=$PWD/work_dirs/device-site
bin=$PWD/work_dirs/device-bin
if [[ -n $wheels ]]; then
  shopt -s nullglob
  files=("$wheels"/*.whl)
  ((${#files[@]})) || { echo "device_check: no wheels in $wheels (make device-wheels)" >&2; exit 2; }
  rm -rf "$site"
  start=$SECONDS
  "$python" -m pip install --quiet --no-deps --no-index --target "$site" "${files[@]}"
  echo "device_check: ${#files[@]} wheels installed into $site in $((SECONDS - start)) s"
  export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
  export PATH=$site/bin:$PATH
fi
if ! command -v videorope-train >/dev/null; then  # not pip-installed here: run the package from src/
  mkdir -p "$bin"
  printf '#!/usr/bin/env bash\nexec "%s" -m videorope_train.cli "$@"\n' "$python" > "$bin/videorope-train"
  chmod +x "$bin/videorope-train"
  export PATH=$bin:$PATH
fi
export PYTHONPATH=$PWD/src:$PWD/tools/torch_flash_attn${PYTHONPATH:+:$PYTHONPATH}
exec "$python" scripts/device_check.py "${args[@]}"
