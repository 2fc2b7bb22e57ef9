#!/usr/bin/env python
"""Evaluation time per GPU: what one Video-MME / MLVU / LongVideoBench question costs at each context preset.

    python scripts/bench_eval.py --random qwen2-vl-7b [--contexts 8k 16k 32k 64k] [--durations 120 1800]
    python scripts/bench_eval.py --model CKPT ...       # a real checkpoint instead of random weights
    python scripts/bench_eval.py ... --video movie.mp4  # a real video instead of the synthetic ones

Every question goes through the lmms-eval backend's own path (``eval/lmms.py`` and ``eval/video.py``: 2 fps, at most 768 frames, the
context's pixel budget, the processor, ``model.generate``), one question at a time as lmms-eval runs it:

* ``read``: decoding the sampled frames of a video not read yet (CPU). ``read_frames`` decodes every frame of the
  file once, so this grows with the source frames (reported): a 30 fps film costs several times a synthetic
  4 fps video of the same length — pass ``--video`` to time one of yours;
* ``processor``: the processor on those frames and the prompt (what a further question on the same video costs
  before the GPU: the backend keeps the last video's frames);
* ``prefill``: ``generate`` with one new token = the forward over the whole prompt;
* ``decode``: per further token, (generate with 1 + N tokens − generate with 1) / N, the N forced with
  ``min_new_tokens`` (a random model would otherwise stop anywhere).

Timings are medians over ``--repeats`` (after one warm-up per setting) with their min–max. The backend reads the
next question's video on a background thread while the current question runs, so a question on a new video costs
``max(read, processor + prefill + answer_tokens · decode)`` (multiple choice: a letter and the end token), and a
benchmark at most its question count times that (questions sharing a video skip the read). The video's duration
decides the frame count (2 fps up to 768 frames from 384 s on), so the shortest and longest ``--durations`` bracket
a benchmark's mix of videos; the longest is the upper bound for videos at or above it. Random weights (``--random``) time the same computation as trained ones: shapes, not
values, set the cost. Writes JSON (``--out``) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from videorope_train.video import probe_video  # noqa: E402
from videorope_train.eval.lmms import VideoRope  # noqa: E402
from videorope_train.eval.video import CONTEXTS  # noqa: E402
from videorope_train.eval.model import LoadedModel, load_model  # noqa: E402

# the papers' 7B models: (family, language-model sizes, vision-tower sizes); "tiny" is the CPU smoke shape
SHAPES = {
    "qwen2-vl-7b": ("qwen2_vl",
                    dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                         num_key_value_heads=4, vocab_size=152064),
                    dict(depth=32, embed_dim=1280, num_heads=16, mlp_ratio=4, hidden_size=3584)),
    "qwen2.5-vl-7b": ("qwen2_5_vl",
                      dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                           num_key_value_heads=4, vocab_size=152064),
                      dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                           window_size=112, fullatt_block_indexes=[7, 15, 23, 31])),
    "tiny": ("qwen2_vl", {}, {}),
}
# questions per benchmark (Video-MME: 900 videos x 3; LongVideoBench: the validation split); add others with
# --questions NAME=COUNT (lmms-eval prints a task's count when it starts)
QUESTIONS = {"videomme": 2700, "longvideobench_val_v": 1337}
PROMPT = ("Which of the following best describes what happens in the video?\nA. A person cooks a meal.\n"
          "B. A car drives through a city.\nC. A ball rolls across a table.\nD. A dog runs in a park.\n"
          "Answer with the option's letter from the given choices directly.")


def random_model(shape: str, rope: str, work: Path, device: str, dtype: torch.dtype, attn: str) -> LoadedModel:
    """A hooked checkpoint of ``shape`` with random weights, built on ``device`` (nothing of its size on disk):
    a small hooked directory supplies the remote code, processor and tokenizer; its config is resized."""
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    from videorope_train.hook.prepare import prepare_model
    from videorope_train.rope import RopeConfig
    from videorope_train.tiny import make_tiny_model

    family, text, vision = SHAPES[shape]
    # head_dim 128 and Qwen2-VL's (16, 24, 24) sections for the 7B shapes; make_tiny_model's own otherwise
    size = dict(hidden_size=256, num_heads=2, num_kv_heads=1, mrope_section=(16, 24, 24)) if text else {}
    base = make_tiny_model(work / "base", family=family, **size)
    hooked = prepare_model(base, work / "hooked", RopeConfig(rope))
    config = AutoConfig.from_pretrained(hooked, trust_remote_code=True)
    for key, value in text.items():
        setattr(config.text_config, key, value)
    if "num_hidden_layers" in text:  # one attention type per layer (all full attention, as in the 7B models)
        config.text_config.layer_types = ["full_attention"] * text["num_hidden_layers"]
    for key, value in vision.items():
        setattr(config.vision_config, key, value)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(config, trust_remote_code=True, dtype=dtype,
                                                        attn_implementation=attn)
    return LoadedModel(model.eval(), AutoProcessor.from_pretrained(hooked, trust_remote_code=True), str(hooked))


def synthetic_video(work: Path, seconds: float, fps: int, size: tuple[int, int]) -> Path:
    from videorope_train.data.demo import write_video

    height, width = size
    return write_video(work / f"video-{seconds:g}s.mp4", frames=max(2, round(seconds * fps)), width=width,
                       height=height, fps=fps)


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def time_question(backend: VideoRope, video: str, decode_tokens: int, repeats: int) -> dict:
    """read / processor / prefill / decode-per-token seconds of one question on ``video`` (module docstring)."""
    model, tokenizer, device = backend.model, backend.tokenizer, backend.device

    def generate(inputs, new_tokens):
        with torch.inference_mode():
            model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                           num_beams=1, pad_token_id=tokenizer.pad_token_id)

    def timed(fn):
        sync(device)
        start = time.perf_counter()
        value = fn()
        sync(device)
        return value, time.perf_counter() - start

    read, processor, prefill, decode = [], [], [], []
    for repeat in range(repeats + 1):  # the first round warms up (kernels, allocator, file cache)
        backend.videos.last = None  # a video not read yet
        _, read_s = timed(lambda: backend.videos(video))
        inputs, processor_s = timed(lambda: backend.prompt_inputs(PROMPT, [video]))  # frames kept: processor only
        _, one = timed(lambda: generate(inputs, 1))
        _, many = timed(lambda: generate(inputs, 1 + decode_tokens))
        if repeat:
            read.append(read_s)
            processor.append(processor_s)
            prefill.append(one)
            decode.append((many - one) / decode_tokens)
    ids = inputs["input_ids"][0]
    grid = inputs["video_grid_thw"][0].tolist()
    return {"input tokens": int(ids.numel()),
            "video tokens": int((ids == backend.model.config.video_token_id).sum()),
            "frames": int(grid[0]) * int(backend.model.config.vision_config.temporal_patch_size),
            "video grid": grid, "read s": spread(read), "processor s": spread(processor),
            "prefill s": spread(prefill),
            "decode s/token": spread(decode)}


def estimates(row: dict, answer_tokens: int, questions: dict) -> dict:
    """Seconds per question on a new video (medians) and hours per benchmark at that cost. The backend reads the
    next question's video while this one runs (processor + GPU), so a question costs the longer of the two."""
    busy = (row["processor s"]["median"] + row["prefill s"]["median"]
            + answer_tokens * row["decode s/token"]["median"])
    per_question = max(row["read s"]["median"], busy)
    return {"question s": per_question, "hours": {name: count * per_question / 3600
                                                  for name, count in questions.items()}}


def table(report: dict) -> str:
    names = list(report["questions"])
    lines = ["| context | video s | source frames | frames | input tokens | read s | processor s | prefill s | "
             "decode ms/token | question s | " + " | ".join(f"{name} h" for name in names) + " |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(names)]

    def cell(values, scale=1.0, digits=2):
        return (f"{values['median'] * scale:.{digits}f} ({values['min'] * scale:.{digits}f}–"
                f"{values['max'] * scale:.{digits}f})")

    for row in report["rows"]:
        lines.append(f"| {row['context']} | {row['video s']:g} | {row['source frames']} | {row['frames']} | "
                     f"{row['input tokens']} | "
                     f"{cell(row['read s'])} | {cell(row['processor s'])} | {cell(row['prefill s'])} | "
                     f"{cell(row['decode s/token'], 1e3, 1)} | "
                     f"{row['question s']:.2f} | " + " | ".join(f"{row['hours'][n]:.1f}" for n in names) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a hooked (or stock) checkpoint directory")
    source.add_argument("--random", choices=sorted(SHAPES), help="random weights of this shape, hooked with --rope")
    parser.add_argument("--rope", default="videorope", help="variant for --random (default videorope)")
    parser.add_argument("--contexts", nargs="+", default=list(CONTEXTS), help="presets (8k ...) or token counts")
    parser.add_argument("--durations", type=float, nargs="+", default=[120.0, 1800.0],
                        help="synthetic video lengths in seconds (default: 2 min and 30 min)")
    parser.add_argument("--video", help="time this video file instead of synthetic ones")
    parser.add_argument("--video-fps", type=int, default=4, help="frame rate of the synthetic videos")
    parser.add_argument("--video-size", type=int, nargs=2, default=[360, 640], metavar=("H", "W"))
    parser.add_argument("--min-frame-tokens", type=int, default=None,
                        help="override the backend's per-frame floor (144 tokens, the authors' setting)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--decode-tokens", type=int, default=16, help="N of the decode measurement")
    parser.add_argument("--answer-tokens", type=int, default=2, help="tokens of a multiple-choice answer")
    parser.add_argument("--questions", nargs="*", default=[], metavar="NAME=COUNT",
                        help=f"benchmarks to estimate (defaults: {QUESTIONS})")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto")
    parser.add_argument("--attn", default=None, help="attention implementation (default: fa2 on GPU if installed)")
    parser.add_argument("--out", default="bench_eval.json")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.decode_tokens < 1:
        parser.error("--repeats and --decode-tokens must be at least 1")
    questions = dict(QUESTIONS)
    for item in args.questions:
        name, _, count = item.partition("=")
        if not name or not count.isdigit():
            parser.error(f"--questions {item!r}: expected NAME=COUNT, e.g. mlvu_dev=2174")
        questions[name] = int(count)

    on_gpu = torch.device(args.device).type == "cuda"
    dtype = torch.bfloat16 if (args.dtype == "auto" and on_gpu) else getattr(torch, args.dtype, torch.float32)
    attn = args.attn
    if attn is None:
        attn = "sdpa"
        if on_gpu:
            try:
                import flash_attn  # noqa: F401

                attn = "flash_attention_2"
            except ImportError:
                pass
    with tempfile.TemporaryDirectory(prefix="bench_eval-") as tmp:
        work = Path(tmp)
        if args.random:
            loaded = random_model(args.random, args.rope, work, args.device, dtype, attn)
        else:
            loaded = load_model(args.model, dtype=str(dtype).removeprefix("torch."), device=args.device,
                                attn_implementation=attn)
        parameters = sum(p.numel() for p in loaded.model.parameters())
        videos = ([(None, args.video)] if args.video else
                  [(seconds, str(synthetic_video(work, seconds, args.video_fps, tuple(args.video_size))))
                   for seconds in args.durations])
        rows = []
        for context in args.contexts:
            token_pixels = loaded.geometry.token_pixels  # 28 * 28 (Qwen2-VL), 32 * 32 (Qwen3-VL)
            floor = args.min_frame_tokens * token_pixels if args.min_frame_tokens else None
            backend = VideoRope(pretrained=loaded, context=context, min_frame_pixels=floor)
            for seconds, video in videos:
                if seconds is None:
                    seconds = probe_video(video).duration
                row = {"context": context, "video s": seconds, "source frames": probe_video(video).frames,
                       **time_question(backend, video, args.decode_tokens, args.repeats)}
                row.update(estimates(row, args.answer_tokens, questions))
                rows.append(row)
                print(f"context {context}, {seconds:g} s video: {row['input tokens']} tokens, "
                      f"{row['question s']:.2f} s/question", flush=True)
    report = {"model": args.model or f"random {args.random} ({args.rope})", "parameters": parameters,
              "device": torch.cuda.get_device_name(args.device) if on_gpu else platform.processor() or "cpu",
              "dtype": str(dtype).removeprefix("torch."), "attention": attn, "torch": torch.__version__,
              "video": args.video or {"fps": args.video_fps, "size": args.video_size},
              "repeats": args.repeats, "decode tokens": args.decode_tokens, "answer tokens": args.answer_tokens,
              "questions": questions, "rows": rows}
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
