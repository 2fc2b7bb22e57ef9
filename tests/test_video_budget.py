"""The authors' per-video pixel budget, applied through LLaMA-Factory's own video path (PyAV, its Qwen2-VL plugin)."""

import math

import pytest

from videorope_train.video import TOKEN_PIXELS, VideoBudget
from videorope_train.data.demo import write_video


def test_budget_formula():
    budget = VideoBudget()
    assert budget.max_tokens == 8000
    assert budget.frame_max_pixels(128) == 98000  # 2 * 6,272,000 / 128
    assert budget.frame_max_pixels(60) == 209066
    assert budget.frame_max_pixels(8) == 768 * 28 * 28  # capped per frame
    tiny = VideoBudget(total_pixels=100 * TOKEN_PIXELS)
    assert tiny.frame_max_pixels(128) == 4 * TOKEN_PIXELS  # the floor, not the frame count (the authors' bug)
    with pytest.raises(ValueError, match="invalid video budget"):
        VideoBudget(min_frame_pixels=0)


def smart_resize(height, width, min_pixels, max_pixels, factor=28):
    """Qwen2-VL's resize rule, written out here: round to multiples of 28, then scale into [min, max] pixels."""
    h, w = round(height / factor) * factor, round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h, w = math.floor(height / beta / factor) * factor, math.floor(width / beta / factor) * factor
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h, w


@pytest.mark.parametrize("seconds, width, height", [(5, 640, 360), (30, 360, 640), (70, 480, 360), (12, 1280, 720)])
def test_visual_tokens_follow_the_budget(tiny_base, tmp_path, seconds, width, height):
    from llamafactory.data.mm_plugin import get_mm_plugin
    from transformers import AutoProcessor

    from videorope_train.hook.prepare import prepare_model
    from videorope_train.rope import RopeConfig

    budget = VideoBudget()
    model_dir = prepare_model(tiny_base, tmp_path / "budget", RopeConfig(), video_budget=budget)
    processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=True)
    assert type(processor.video_processor).__name__ == "VideoRopeVideoProcessor"
    # what LLaMA-Factory's patch_processor sets from the recipe
    processor.video_fps, processor.video_maxlen = 2.0, 128
    processor.video_max_pixels, processor.video_min_pixels = budget.max_frame_pixels, 16 * 16
    video = write_video(tmp_path / "clip.mp4", frames=2 * seconds, width=width, height=height, fps=2)
    plugin = get_mm_plugin("qwen2_vl", image_token="<|image_pad|>", video_token="<|video_pad|>")
    messages = [{"role": "user", "content": "<video>What happens?"}]
    expanded = plugin.process_messages(messages, [], [str(video)], [], processor)  # LLaMA-Factory's token count
    grid = plugin._get_mm_inputs([], [str(video)], [], processor)["video_grid_thw"][0].tolist()

    frames = min(128, 2 * seconds)
    frames += frames % 2
    limit = budget.frame_max_pixels(frames)
    expected_h, expected_w = smart_resize(height, width, min(budget.min_frame_pixels, limit), limit)
    assert grid == [frames // 2, expected_h // 14, expected_w // 14]
    tokens = grid[0] * grid[1] * grid[2] // 4
    assert tokens <= budget.max_tokens and expected_h * expected_w <= limit
    assert expanded[0]["content"].count("<|video_pad|>") == tokens  # the plugin's count matches the features


@pytest.mark.slow
def test_budget_applies_through_llamafactory_cli(tiny_base, demo_dataset_dir, tmp_path):
    """check-data (LLaMA-Factory's pipeline) sees budgeted videos, and the real CLI trains on them."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from videorope_train.data.check import check_data
    from videorope_train.hook.prepare import prepare_model
    from videorope_train.rope import RopeConfig

    budget = VideoBudget(total_pixels=16 * TOKEN_PIXELS, min_frame_pixels=TOKEN_PIXELS)  # 16 tokens per video
    model_dir = prepare_model(tiny_base, tmp_path / "tiny-videorope", RopeConfig(), video_budget=budget)
    overrides = [f"model_name_or_path={model_dir}", f"dataset_dir={demo_dataset_dir}", "video_max_pixels=602112"]
    repo = Path(__file__).resolve().parents[1]
    report = check_data(repo / "recipes" / "tiny_cpu_sft.yaml", overrides=overrides, out=tmp_path / "check")
    assert not report["would_crash"]
    assert report["samples"] == 9 and 0 < report["visual_tokens"]["max"] <= budget.max_tokens
    bin_dir = Path(sys.executable).parent
    result = subprocess.run(
        [str(bin_dir / "llamafactory-cli"), "train", str(repo / "recipes" / "tiny_cpu_sft.yaml"), *overrides,
         f"output_dir={tmp_path / 'out'}", "max_steps=1"],
        cwd=repo, env=dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", HF_HUB_OFFLINE="1"),
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "out" / "model.safetensors").is_file()


@pytest.mark.parametrize("seconds, width, height", [(30, 360, 640), (12, 1280, 720)])
def test_qwen3_vl_budget_counts_the_same_tokens_through_llamafactory(hooked_dir, tmp_path, seconds, width, height):
    """A Qwen3-VL token covers 32×32 pixels: the default budget is the authors' 8000 / 768 / 4 *tokens*, applied by
    the Qwen3-VL processor through LLaMA-Factory's qwen3_vl plugin, with one timestamp per temporal patch."""
    from llamafactory.data.mm_plugin import get_mm_plugin
    from transformers import AutoProcessor

    from videorope_train.hook.prepare import prepare_model, token_pixels
    from videorope_train.rope import RopeConfig

    base = (hooked_dir("videorope", family="qwen3_vl") / "model.safetensors").resolve().parent
    assert token_pixels(base) == 32 * 32
    budget = VideoBudget.of_tokens(token_pixels(base))
    assert budget == VideoBudget(8000 * 1024, 768 * 1024, 4 * 1024)
    model_dir = prepare_model(base, tmp_path / "budget3", RopeConfig(), video_budget=budget)
    processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=True)
    assert type(processor.video_processor).__name__ == "VideoRopeVideoProcessor"
    assert any(cls.__name__ == "Qwen3VLVideoProcessor" for cls in type(processor.video_processor).__mro__)
    processor.video_fps, processor.video_maxlen = 2.0, 128
    processor.video_max_pixels, processor.video_min_pixels = budget.max_frame_pixels, 16 * 16
    video = write_video(tmp_path / "clip.mp4", frames=2 * seconds, width=width, height=height, fps=2)
    plugin = get_mm_plugin("qwen3_vl", image_token="<|image_pad|>", video_token="<|video_pad|>")
    messages = [{"role": "user", "content": "<video>What happens?"}]
    expanded = plugin.process_messages(messages, [], [str(video)], [], processor)[0]["content"]
    grid = plugin._get_mm_inputs([], [str(video)], [], processor)["video_grid_thw"][0].tolist()

    frames = min(128, 2 * seconds)
    limit = budget.frame_max_pixels(frames)
    expected_h, expected_w = smart_resize(height, width, min(budget.min_frame_pixels, limit), limit, factor=32)
    assert grid == [frames // 2, expected_h // 16, expected_w // 16]
    per_frame = grid[1] * grid[2] // 4
    assert grid[0] * per_frame <= 8000 and expected_h * expected_w <= limit
    assert expanded.count("<|video_pad|>") == grid[0] * per_frame
    assert expanded.count("seconds><|vision_start|>") == grid[0]  # a timestamp before every temporal patch
