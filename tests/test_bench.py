"""The benchmark script runs end to end (tiny sizes) and checks its contenders agree before timing them."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_rope_runs(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "scripts/bench_rope.py", "--tokens", "1024", "--repeats", "2", "--index-batch", "2",
         "--step-repeats", "1", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = report["rotary"][0]["rows"]
    assert {"this project", "stock M-RoPE", "authors' concat"} <= set(rows)
    assert report["index"][0]["this project ms"] > 0
    assert set(report["step"]["ms"]) == {"videorope (hook)", "mrope (hook)", "mrope (stock)"}
