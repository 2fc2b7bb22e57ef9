"""``videorope-train eval {vniah,sweep,compare,vruler,paper}``, ``make-vniah-data``, ``make-vruler-data`` and
``make-lmms-example`` (registered by ``cli.py``).

Only argparse at import time; torch / transformers load when a command runs.
"""

from __future__ import annotations

import argparse


def _size(value: str):
    height, sep, width = value.lower().partition("x")
    try:
        size = (int(height), int(width))
    except ValueError:
        size = None
    if not sep or size is None or min(size) < 1:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH, e.g. 252x448, got {value!r}")
    return size


def _add_harness_arguments(parser: argparse.ArgumentParser, needles: bool = True) -> None:
    parser.add_argument("--haystack", required=True, help="haystack video (any format PyAV reads)")
    if needles:
        parser.add_argument("--needles", required=True,
                            help="needle JSON, or a directory with needles.json / dataset.json / *.parquet "
                                 "(lmms-lab/v_niah_needles as downloaded)")
        parser.add_argument("--distractors", default=None,
                            help="V-NIAH-D distractor images: JSON list in needle order, or a directory "
                                 "(NAME_interrupt.* per needle NAME); needles may also carry a 'distractor' key")
        parser.add_argument("--task", choices=("auto", "vniah", "vniah-d"), default="auto",
                            help="auto (default): vniah-d when every needle has a distractor, else vniah")
    parser.add_argument("--min-frames", type=int, default=100)
    parser.add_argument("--max-frames", type=int, default=3000)
    parser.add_argument("--frame-interval", type=int, default=200)
    parser.add_argument("--depth-interval", type=float, default=0.2)
    parser.add_argument("--frame-size", type=_size, default=None,
                        help="HxW every frame and needle is resized to (default: the checkpoint's 9x16 tokens = 144 "
                             "per frame: 252x448 on Qwen2-VL, 288x512 on Qwen3-VL's 32-pixel tokens)")
    parser.add_argument("--distractor-gap", type=int, default=200, help="haystack frames between needle and distractor")
    parser.add_argument("--haystack-fps", type=float, default=None,
                        help="sample the haystack at this rate from the start (papers: 1); "
                             "default: evenly over the whole video")
    parser.add_argument("--seed", type=int, default=0, help="seed of the distractor side draws")
    parser.add_argument("--batch-size", type=int, default=1, help="sequences per forward (short contexts only)")
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="chunked prefill: tokens per forward with a KV cache (long contexts on one GPU)")
    parser.add_argument("--encode-batch", type=int, default=32, help="frames per vision-tower call")
    parser.add_argument("--cache-dir", default=None, help="embedding cache (default OUT/cache)")
    parser.add_argument("--overwrite", action="store_true", help="discard the cells already in --out")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float16", "float32"))
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--device-map", default=None, help="'auto': spread the layers over all visible GPUs")
    parser.add_argument("--attn-implementation", default=None,
                        help="default: flash_attention_2 on GPU when installed, else sdpa")
    parser.add_argument("--processor", default=None, help="processor directory when the checkpoint has none")


def add_commands(commands) -> None:
    """Add ``eval`` (vniah / sweep / compare / vruler / paper) and the ``make-*`` commands to a subparsers object."""
    evaluate = commands.add_parser("eval", help="V-NIAH / V-NIAH-D, and benchmark scores next to the paper's")
    sub = evaluate.add_subparsers(dest="eval_command", required=True)

    vniah = sub.add_parser("vniah", help="V-NIAH / V-NIAH-D for one checkpoint (resumable)")
    vniah.add_argument("--model", required=True,
                       help="model directory (hooked or stock Qwen2-VL, Qwen2.5-VL or Qwen3-VL)")
    vniah.add_argument("--out", required=True, help="result directory: cells/, summary.json, heatmap.png, cache/")
    vniah.add_argument("--name", default=None, help="run name shown in the heatmap title")
    vniah.add_argument("--plan", action="store_true",
                       help="print tokens and rough GPU memory per length (from config.json) and exit")
    _add_harness_arguments(vniah)

    sweep = sub.add_parser("sweep", help="the harness for several checkpoints, then their heatmaps side by side")
    sweep.add_argument("--model", required=True, action="append", metavar="NAME=DIR",
                       help="a checkpoint (repeat: one per variant)")
    sweep.add_argument("--out", required=True, help="OUT/NAME per checkpoint, OUT/compare.png, OUT/compare.json")
    _add_harness_arguments(sweep)

    compare = sub.add_parser("compare", help="draw finished runs side by side")
    compare.add_argument("--runs", required=True, nargs="+", metavar="NAME=DIR", help="result directories")
    compare.add_argument("--out", required=True, help="PNG to write")

    ruler = sub.add_parser("vruler", help="V-RULER (VideoRoPE++): mkmv, counting, ordering, vniah-d (resumable)")
    ruler.add_argument("--model", required=True,
                       help="model directory (hooked or stock Qwen2-VL, Qwen2.5-VL or Qwen3-VL)")
    ruler.add_argument("--subtask", default=[], action="append", metavar="NAME=RECORDS_JSON",
                       help="a subtask (mkmv, counting, ordering, vniah-d) and its records in the authors' format "
                            "(their videorope_plus/v_ruler/data/*.json); repeat for several")
    ruler.add_argument("--images", default=None, help="directory the records' image names are resolved in")
    ruler.add_argument("--stack", default=None, metavar="RECORDS_JSON",
                       help="also the lengthy multimodal stack: LongVideoBench-format records (video_path, question, "
                            "candidates, correct_choice)")
    ruler.add_argument("--videos", default=None, help="directory the stack records' video_path is resolved in")
    ruler.add_argument("--stack-contexts", default="224000,232000,240000,248000,256000,264000,272000,280000,288000,"
                       "296000", help="comma list of total context lengths (tokens; the authors': 224k-296k)")
    ruler.add_argument("--stack-depths", default="0,0.2,0.4,0.6,0.8,1", help="comma list of video depths")
    ruler.add_argument("--stack-video-tokens", type=int, default=32768, help="visual budget of the stacked video")
    ruler.add_argument("--max-new-tokens", type=int, default=3, help="stack answers: tokens generated (authors: 3)")
    ruler.add_argument("--out", required=True, help="OUT/<subtask>/{cells,summary.json,heatmap.png}, OUT/vruler.json")
    _add_harness_arguments(ruler, needles=False)

    paper = sub.add_parser("paper", help="benchmark scores of several checkpoints next to the paper's numbers")
    paper.add_argument("--run", required=True, action="append", metavar="NAME=DIR",
                       help="a checkpoint's results: lmms-eval output dirs (any depth; the context from its "
                            "context= model argument) and/or V-NIAH result dirs (summary.json)")
    paper.add_argument("--variant", action="append", default=[], metavar="NAME=VARIANT",
                       help="the paper row for NAME when its checkpoint cannot be read (default: its videorope block)")
    paper.add_argument("--out", required=True, help="OUT/paper.md, OUT/paper.png, OUT/paper.json")

    ruler_data = commands.add_parser("make-vruler-data", help="write a small synthetic V-RULER set (authors' format)")
    ruler_data.add_argument("out")
    ruler_data.add_argument("--frames", type=int, default=48, help="haystack video frames")
    ruler_data.add_argument("--size", type=_size, default=(112, 112), help="HxW of the video and the images")

    data = commands.add_parser("make-vniah-data", help="write a small synthetic V-NIAH haystack + needle set")
    data.add_argument("out")
    data.add_argument("--frames", type=int, default=48, help="haystack video frames")
    data.add_argument("--size", type=_size, default=(112, 112), help="HxW of the video and the images")
    data.add_argument("--fps", type=int, default=8)
    data.add_argument("--needles", type=int, default=3, help="number of needles (1-4)")

    example = commands.add_parser("make-lmms-example",
                                  help="write a tiny lmms-eval task (4 synthetic videos) to try --model videorope on")
    example.add_argument("out", help="the task's directory: pass it to lmms-eval as --include_path")


def default_frame_size(model: str) -> tuple:
    """9x16 of the checkpoint's visual tokens (144 per frame, the papers' setting): from its config, before loading."""
    from transformers import AutoConfig

    from .model import check_checkpoint

    check_checkpoint(model)  # a missing directory named as such, not as a malformed Hub id
    vision = AutoConfig.from_pretrained(model, trust_remote_code=True).vision_config
    factor = vision.patch_size * vision.spatial_merge_size
    return 9 * factor, 16 * factor


def _settings(args):
    from .vniah import VNIAHSettings

    return VNIAHSettings(
        min_frames=args.min_frames, max_frames=args.max_frames, frame_interval=args.frame_interval,
        depth_interval=args.depth_interval, task=getattr(args, "task", "auto"),
        frame_size=tuple(args.frame_size) if args.frame_size else default_frame_size(args.model),
        distractor_gap=args.distractor_gap, haystack_fps=args.haystack_fps, seed=args.seed,
        batch_size=args.batch_size, chunk_size=args.chunk_size, encode_batch=args.encode_batch,
    )


def _load_kwargs(args) -> dict:
    return dict(dtype=args.dtype, device=args.device, device_map=args.device_map,
                attn_implementation=args.attn_implementation, processor=args.processor)


def _report(summary: dict, out) -> str:
    average = "n/a" if summary["average"] is None else f"{summary['average']:.4f}"
    missing = "" if summary["complete"] else f", {len(summary['missing'])} missing"
    return (f"{summary['task']}: average {average} over {summary['num_cells']} cells "
            f"({summary['computed_cells']} computed now{missing}) -> {out}/summary.json, {out}/heatmap.png")


def run_command(args) -> int:
    """Run a command added by ``add_commands``; ValueError / FileNotFoundError propagate to the caller."""
    if args.command == "make-vniah-data":
        from .synthetic import make_vniah_data

        path = make_vniah_data(args.out, frames=args.frames, size=tuple(args.size), fps=args.fps,
                               num_needles=args.needles)
        print(f"synthetic V-NIAH data: haystack {path.parent / 'haystack.mp4'}, needles {path}")
        return 0
    if args.command == "make-vruler-data":
        from .synthetic import make_vruler_data

        paths = make_vruler_data(args.out, frames=args.frames, size=tuple(args.size))
        print("synthetic V-RULER data: " + ", ".join(f"{k} {v}" for k, v in paths.items()))
        return 0
    if args.command == "make-lmms-example":
        from .lmms_example import TASK, make_lmms_example

        print(f"lmms-eval task {TASK}: {make_lmms_example(args.out)} (--tasks {TASK} --include_path {args.out})")
        return 0
    if args.eval_command == "vruler":
        from .plot import parse_named
        from .vruler import run_vruler

        tasks = {name: (path, args.images) for name, path in parse_named(args.subtask, "--subtask")}
        if tasks and args.images is None:
            raise ValueError("--images is required with --subtask (the records' image names are resolved there)")
        stack = None
        if args.stack:
            if args.videos is None:
                raise ValueError("--videos is required with --stack")
            stack = {"records": args.stack, "videos": args.videos, "max_new_tokens": args.max_new_tokens,
                     "contexts": [int(c) for c in args.stack_contexts.split(",")],
                     "depths": [float(d) for d in args.stack_depths.split(",")],
                     "video_tokens": args.stack_video_tokens}
        result = run_vruler(args.model, args.haystack, tasks, args.out, _settings(args), cache_dir=args.cache_dir,
                            overwrite=args.overwrite, progress=not args.no_progress, load_kwargs=_load_kwargs(args),
                            stack=stack)
        for name, score in result["subtasks"].items():
            print(f"{name}: {'n/a' if score is None else f'{score:.4f}'}")
        headline = "n/a" if result["vruler"] is None else f"{result['vruler']:.4f}"
        print(f"V-RULER: {headline} -> {args.out}/vruler.json, {args.out}/vruler.png")
        return 0
    if args.eval_command == "vniah" and args.plan:
        from .vniah import format_memory_plan, memory_plan

        print(format_memory_plan(memory_plan(args.model, _settings(args))))
        return 0
    if args.eval_command == "vniah":
        from .vniah import run_vniah

        summary = run_vniah(args.model, args.haystack, args.needles, args.out, _settings(args),
                            distractors=args.distractors, cache_dir=args.cache_dir, overwrite=args.overwrite,
                            progress=not args.no_progress, load_kwargs=_load_kwargs(args), name=args.name)
        print(_report(summary, args.out))
        return 0
    if args.eval_command == "sweep":
        from .compare import sweep
        from .plot import comparison_table, parse_named

        path, summaries = sweep(parse_named(args.model, "--model"), args.haystack, args.needles, args.out,
                                _settings(args), distractors=args.distractors, cache_dir=args.cache_dir,
                                overwrite=args.overwrite, progress=not args.no_progress,
                                load_kwargs=_load_kwargs(args))
        print(comparison_table(summaries))
        print(f"side by side: {path}")
        return 0
    if args.eval_command == "compare":
        from .compare import compare_dirs
        from .plot import parse_named

        path, table = compare_dirs(parse_named(args.runs, "--runs"), args.out)
        print(table)
        print(f"side by side: {path}")
        return 0
    if args.eval_command == "paper":
        from .paper import paper_comparison
        from .plot import parse_named

        path, table = paper_comparison(parse_named(args.run, "--run"), args.out,
                                       dict(parse_named(args.variant, "--variant")))
        print(table)
        print(f"plot: {path}")
        return 0
    raise ValueError(f"unknown eval command {args.eval_command!r}")
