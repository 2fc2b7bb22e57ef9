"""The benchmark script runs end to end (tiny sizes) and checks its contenders agree before timing them."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from videorope_train.rope.rotary import triton_available

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("dtype", ["auto", "bfloat16"])  # bfloat16: the GPU default's tolerances, on CPU
def test_bench_rope_runs(tmp_path, dtype):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "scripts/bench_rope.py", "--tokens", "1024", "--repeats", "2", "--index-batch", "2",
         "--step-repeats", "2", "--step-hidden", "256", "--step-layers", "2", "--dtype", dtype, "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    entry = report["rotary"][0]
    rows = entry["rows"]
    assert {"this project", "stock M-RoPE", "authors' concat", "(q, k copy: bandwidth floor)"} <= set(rows)
    fused = "this project, fused (triton)"
    gpu_kernel = torch.cuda.is_available() and triton_available()
    assert (fused in rows) == gpu_kernel, "the fused kernel is timed exactly when a GPU and Triton are present"
    assert fused in rows or "CUDA" in entry["skipped"][fused]
    assert rows["(q, k copy: bandwidth floor)"]["x floor"] == 1.0
    element_bytes = 2 if dtype == "bfloat16" or torch.cuda.is_available() else 4
    assert entry["bandwidth floor bytes"] == 2 * (28 + 4) * entry["tokens"] * 128 * element_bytes
    assert report["index"][0]["this project ms"] > 0
    step = report["step"]
    assert set(step["ms"]) == {"videorope (hook)", "mrope (hook)", "mrope (stock)"}
    low, high = step["videorope/mrope (hook) ci95"]
    assert step["pairs"] == 2 and low <= step["videorope/mrope (hook)"] <= high
