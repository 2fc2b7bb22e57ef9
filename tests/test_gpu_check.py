"""scripts/gpu_check.sh's orchestration on a CPU (--smoke: tiny sizes, the flash_attn stand-in): environment, the
benchmark, a fa2 + ZeRO-3 run on 2 processes killed after its mid-way checkpoint and resumed by the launcher, the
JSON and markdown reports.  On a GPU node the same script runs the real kernels at ~100M parameters."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_gpu_check_smoke_on_cpu(tmp_path):
    out = tmp_path / "check"
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}")
    result = subprocess.run(["bash", "scripts/gpu_check.sh", "--smoke", "--steps", "6", "--out", str(out)], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["ok"] and report["environment"]["flash_attn"] == "2.8.3"  # the stand-in, found as a package
    train = report["parts"]["train + resume"]
    assert train["resumed from checkpoint"] and train["processes"] == 2 and train["steps"] == 6
    assert train["max relative loss difference after restart"] <= 1e-4
    assert "videorope/mrope train step" in report["parts"]["benchmark"]["figures"]
    table = (out / "gpu_check.md").read_text()
    assert "| train + resume | ok |" in table and "| benchmark | ok |" in table
    # evaluation time through the lmms-eval backend with fa2 (the stand-in): 20 s video, 144-token frames = 3000
    (figures,) = report["parts"]["evaluation time"]["figures"].values()
    assert "| evaluation time | ok |" in table and "s/question" in figures
    rows = json.loads((out / "bench_eval.json").read_text())
    assert rows["attention"] == "flash_attention_2" and rows["rows"][0]["video tokens"] == 20 * 10 * 15
