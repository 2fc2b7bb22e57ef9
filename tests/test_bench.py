"""The benchmark script runs end to end (tiny sizes) and checks its contenders agree before timing them."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from videorope_train.rope.rotary import triton_available

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["auto"])  # bfloat16 (the GPU default's tolerances): the GPU check's smoke
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
    assert step["pairs"] == 2 and len(step["videorope/mrope (hook) ci95"]) == 2


def test_bootstrap_ratio_worked_by_hand():
    """Paired ratio of means with its percentile-bootstrap interval.  Pairs (1, 1) and (3, 1): ratio (1+3)/2 / 1 = 2;
    a resample of 2 pairs has numerator mean 1, 2 or 3 with probabilities 1/4, 1/2, 1/4 (denominator always 1), so
    the 2.5% and 97.5% quantiles are 1 and 3.  Equal ratios in every pair give a zero-width interval."""
    sys.path.insert(0, str(REPO / "scripts"))
    from bench_rope import bootstrap_ratio

    result = bootstrap_ratio([1.0, 3.0], [1.0, 1.0])
    assert result["ratio"] == 2.0 and result["ci95"] == [1.0, 3.0] and result["pairs"] == 2
    result = bootstrap_ratio([2.0, 4.0, 6.0], [1.0, 2.0, 3.0])
    assert result["ratio"] == 2.0 and result["ci95"] == [2.0, 2.0]


def _bench_eval(tmp_path, *args):
    out = tmp_path / "bench_eval.json"
    result = subprocess.run([sys.executable, "scripts/bench_eval.py", *args, "--repeats", "2", "--decode-tokens", "2",
                             "--device", "cpu", "--out", str(out)], cwd=REPO, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(out.read_text()), result.stdout


@pytest.mark.slow
def test_bench_eval_times_questions_as_the_backend_builds_them(tmp_path):
    """Random tiny weights, a 20 s synthetic 128x192 video (40 frames at 2 fps = 20 temporal patches), a 4-token
    per-frame floor so the context's budget decides the frame size. Worked by hand (smart resize, 28-px units):
    1024 tokens: share 2*(1024-512)*784/40 = 20070 px < 140x196 -> scaled by sqrt(24576/20070) and floored to
    112x168 = 4x6 tokens; 4096: share 140493 px >= 140x196 -> 5x7 tokens."""
    report, stdout = _bench_eval(tmp_path, "--random", "tiny", "--contexts", "1024", "4096", "--durations", "20",
                                 "--video-size", "128", "192", "--min-frame-tokens", "4", "--questions", "mlvu_dev=7")
    rows = {row["context"]: row for row in report["rows"]}
    assert rows["1024"]["video grid"] == [20, 8, 12] and rows["1024"]["video tokens"] == 20 * 4 * 6
    assert rows["4096"]["video grid"] == [20, 10, 14] and rows["4096"]["video tokens"] == 20 * 5 * 7
    for row in rows.values():
        assert row["frames"] == 40 and row["video s"] == 20 and row["source frames"] == 80  # 20 s at 4 fps
        assert row["input tokens"] > row["video tokens"]  # the multiple-choice prompt around the video
        for part in ("read s", "processor s", "prefill s", "decode s/token"):
            timing = row[part]
            assert timing["n"] == 2 and timing["min"] <= timing["median"] <= timing["max"]
        assert row["read s"]["min"] > 0 and row["processor s"]["min"] > 0 and row["prefill s"]["min"] > 0
        assert set(row["hours"]) == {"videomme", "longvideobench_val_v", "mlvu_dev"}
        assert row["hours"]["videomme"] == pytest.approx(2700 * row["question s"] / 3600)
    assert report["parameters"] > 0 and report["attention"] == "sdpa"
    assert "| 1024 | 20 | 80 | 40 | " in stdout  # the printed table


@pytest.mark.slow
def test_bench_eval_on_a_checkpoint_and_a_given_video(tmp_path):
    from videorope_train.data.demo import write_video
    from videorope_train.hook.prepare import prepare_model
    from videorope_train.rope import RopeConfig
    from videorope_train.tiny import make_tiny_model

    model = prepare_model(make_tiny_model(tmp_path / "base"), tmp_path / "model", RopeConfig("videorope"))
    video = write_video(tmp_path / "clip.mp4", frames=30, width=96, height=64, fps=10)  # 3 s -> 6 frames at 2 fps
    report, _ = _bench_eval(tmp_path, "--model", str(model), "--video", str(video), "--contexts", "8k")
    (row,) = report["rows"]
    assert report["model"] == str(model) and row["context"] == "8k"
    assert row["video s"] == pytest.approx(3.0) and row["frames"] == 6


@pytest.mark.parametrize("shape, parameters", [("qwen2-vl-7b", 8_291_375_616), ("qwen2.5-vl-7b", 8_292_166_656)])
def test_bench_eval_random_shapes_are_the_released_models(tmp_path, shape, parameters):
    """The GPU benchmark's random models have the released checkpoints' parameter counts (their safetensors
    metadata) and head_dim 128, hooked (built on the meta device: nothing allocated)."""
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import bench_eval
    finally:
        sys.path.remove(str(REPO / "scripts"))

    loaded = bench_eval.random_model(shape, "videorope", tmp_path, "meta", torch.bfloat16, "sdpa")
    text = loaded.model.config.text_config
    assert sum(p.numel() for p in loaded.model.parameters()) == parameters
    assert text.hidden_size // text.num_attention_heads == 128 and loaded.hooked
    assert loaded.rope.variant == "videorope"
