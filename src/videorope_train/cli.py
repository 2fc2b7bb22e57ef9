"""`videorope-train` command line: model preparation and demo assets.

Training itself is LLaMA-Factory's own `llamafactory-cli train RECIPE.yaml` on a prepared model directory.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .rope import EXTRAPOLATIONS, VARIANTS, RopeConfig


def _rope_from_args(args) -> RopeConfig:
    return RopeConfig(
        variant=args.rope,
        temporal_stride=args.temporal_stride,
        extrapolation=args.extrapolation,
        extrapolation_factor=args.factor,
        original_context=args.original_context,
        text_after_block=args.text_after_block,
        centering=args.centering,
        extrapolate_in_training=args.extrapolate_in_training,
    )


def _add_rope_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rope", required=True, choices=VARIANTS, help="RoPE variant")
    parser.add_argument("--temporal-stride", type=float, default=2.0, help="ATS δ (videorope), default 2")
    parser.add_argument("--extrapolation", choices=EXTRAPOLATIONS, default=None, help="inference-time scaling")
    parser.add_argument("--factor", type=float, default=1.0, help="extrapolation factor s")
    parser.add_argument("--original-context", type=int, default=32768, help="training context L for scaling")
    parser.add_argument("--text-after-block", choices=("code", "paper"), default="code")
    parser.add_argument("--centering", choices=("code", "paper"), default="code")
    parser.add_argument("--extrapolate-in-training", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="videorope-train", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    prepare = commands.add_parser("prepare-model", help="turn a stock Qwen2-VL / Qwen2.5-VL / Qwen3-VL directory into a hooked one")
    prepare.add_argument("--base", required=True, help="stock model directory (qwen2_vl, qwen2_5_vl or qwen3_vl)")
    prepare.add_argument("--out", required=True, help="where to write the hooked directory")
    prepare.add_argument("--copy", action="store_true", help="copy files instead of symlinking them")
    prepare.add_argument("--video-budget", action="store_true",
                         help="apply the authors' per-video pixel budget in the processor (see README)")
    prepare.add_argument("--video-total-pixels", type=int, default=None,
                         help="default: 8000 visual tokens' worth (8000·28² for Qwen2-VL, 8000·32² for Qwen3-VL)")
    prepare.add_argument("--video-max-frame-pixels", type=int, default=None, help="default: 768 tokens' worth")
    prepare.add_argument("--video-min-frame-pixels", type=int, default=None, help="default: 4 tokens' worth")
    _add_rope_arguments(prepare)

    base = commands.add_parser("make-base", help="the papers' start: a Qwen2-VL vision tower on a Qwen2 language model")
    base.add_argument("--vision", required=True, help="stock Qwen2-VL / Qwen2.5-VL directory (its vision tower, merger, "
                                                      "processor and tokenizer are kept), e.g. Qwen2-VL-7B-Instruct")
    base.add_argument("--language", required=True, help="Qwen2-family causal LM directory, e.g. Qwen2-7B (the authors')")
    base.add_argument("--out", required=True, help="where to write the joined model (then: prepare-model --base OUT)")

    tiny = commands.add_parser("make-tiny-model", help="write a random tiny Qwen2-VL, Qwen2.5-VL or Qwen3-VL (offline)")
    tiny.add_argument("out")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--family", choices=("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe"), default="qwen2_vl")
    tiny.add_argument("--hidden-size", type=int, default=64)
    tiny.add_argument("--layers", type=int, default=2)
    tiny.add_argument("--heads", type=int, default=4)
    tiny.add_argument("--kv-heads", type=int, default=2)
    tiny.add_argument("--mrope-section", type=int, nargs=3, default=None,
                      help="sums to head_dim / 2 (default: 2 3 3; qwen3_vl*: 4 2 2)")

    plan = commands.add_parser("launch-plan", help="shell lines a launcher evaluates before llamafactory-cli")
    plan.add_argument("recipe")
    plan.add_argument("--nodes", type=int, default=1)
    plan.add_argument("--gpus-per-node", type=int, default=1, help="processes per node")
    plan.add_argument("--global-batch", type=int, default=None, help="keep this global batch (sets grad accumulation)")
    plan.add_argument("overrides", nargs="*", help="key=value recipe overrides")

    check = commands.add_parser("check-data", help="check every sample of a recipe's datasets before training")
    check.add_argument("--recipe", required=True, help="the LLaMA-Factory recipe training will use")
    check.add_argument("--dataset", action="append", help="dataset name(s) to check (default: the recipe's)")
    check.add_argument("--out", default="data_check", help="where to write report.json and tokens.png")
    check.add_argument("--workers", type=int, default=None, help="default: usable CPUs; 0 checks in this process")
    check.add_argument("--limit", type=int, default=None, help="check the first N samples of each dataset")
    check.add_argument("overrides", nargs="*", help="key=value recipe overrides (as given to training)")

    demo = commands.add_parser("make-demo-data", help="write the demo videos, images and sharegpt JSON")
    demo.add_argument("dataset_dir", nargs="?", default="data")

    llava = commands.add_parser("prepare-llava-video", help="LLaVA-Video-178K -> sharegpt shards + dataset_info")
    llava.add_argument("--src", required=True, help="LLaVA-Video-178K root (the <duration>_<source>/ folders)")
    llava.add_argument("--out", required=True, help="dataset dir: llava_video_178k/ shards + dataset_info.json")
    llava.add_argument("--dataset-info", default=None, help="also merge the entries into this dataset_info.json")
    llava.add_argument("--max-duration-s", type=float, default=180.0, help="drop longer videos (default 180)")
    llava.add_argument("--probe-duration", action="store_true", help="read durations with PyAV, not folder names")
    llava.add_argument("--videos-0-2m", default="136000", help="videos under 2 min to sample ('all': no cap)")
    llava.add_argument("--videos-2-3m", default="18000", help="videos of 2-3 min to sample ('all': no cap)")
    llava.add_argument("--seed", type=int, default=0, help="sampling seed")
    llava.add_argument("--sources", default=None, help="comma list, e.g. academic_v0_1,youtube_v0_1 (default all)")
    llava.add_argument("--video-root", action="append", default=[], help="extra folder to look for videos in")
    llava.add_argument("--media-dir", default=None, help="write video paths relative to this (default absolute)")
    llava.add_argument("--shard-size", type=int, default=20000, help="records per shard file")
    llava.add_argument("--restart", action="store_true", help="discard a previous run's output and state")
    llava.add_argument("--no-progress", action="store_true", help="no progress bars")

    repro = commands.add_parser("repro", help="the papers' mechanism in miniature on a CPU: the lag probe (README)")
    repro.add_argument("--out", default="work_dirs/repro", help="runs, models and repro.json / .md / .png")
    repro.add_argument("--seeds", type=int, default=8, help="paired seeds: each trains every variant once")
    repro.add_argument("--variants", default="mrope,videorope",
                       help="comma list among vanilla, tad, mrope, mrope-interleaved, videorope (mrope and videorope are compared)")
    repro.add_argument("--workers", type=int, default=2, help="runs in parallel, one CPU core each")
    repro.add_argument("--steps", type=int, default=300, help="training steps per run")
    repro.add_argument("--overwrite", action="store_true", help="rerun finished seeds (else they are kept)")

    from .eval.cli import add_commands as add_eval_commands  # eval ..., make-{vniah,vruler}-data, make-lmms-example

    add_eval_commands(commands)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command in ("eval", "make-vniah-data", "make-vruler-data", "make-lmms-example"):
            from .eval.cli import run_command

            return run_command(args)
        if args.command == "prepare-model":
            from .hook.prepare import prepare_model, token_pixels
            from .video import VideoBudget

            budget = None
            if args.video_budget:
                tokens = VideoBudget.of_tokens(token_pixels(args.base))
                budget = VideoBudget(args.video_total_pixels or tokens.total_pixels,
                                     args.video_max_frame_pixels or tokens.max_frame_pixels,
                                     args.video_min_frame_pixels or tokens.min_frame_pixels)
            out = prepare_model(args.base, args.out, _rope_from_args(args), copy=args.copy, video_budget=budget)
            print(f"hooked model written to {out}")
        elif args.command == "make-base":
            from .base import make_base

            print(f"joined model written to {make_base(args.vision, args.language, args.out)}")
        elif args.command == "make-tiny-model":
            from .tiny import make_tiny_model

            path = make_tiny_model(args.out, hidden_size=args.hidden_size, num_layers=args.layers, num_heads=args.heads,
                                   num_kv_heads=args.kv_heads, mrope_section=args.mrope_section,
                                   seed=args.seed, family=args.family)
            print(f"tiny {args.family} written to {path}")
        elif args.command == "launch-plan":
            from .launch import launch_plan, shell_lines

            print(shell_lines(launch_plan(args.recipe, args.nodes, args.gpus_per_node, args.global_batch,
                                          args.overrides)))
        elif args.command == "check-data":
            from .data.check import check_data, format_table

            report = check_data(args.recipe, args.dataset, args.overrides, args.out, args.workers, args.limit)
            print(format_table(report))
            print(f"report: {args.out}/report.json, histogram: {args.out}/tokens.png")
            return 1 if report["would_crash"] else 0
        elif args.command == "repro":
            from .repro import ProbeSettings, run_repro

            result = run_repro(args.out, seeds=args.seeds, variants=args.variants.split(","), workers=args.workers,
                               settings=ProbeSettings(steps=args.steps), overwrite=args.overwrite)
            print((Path(args.out) / "repro.md").read_text())
            verdict = result["verdict"]
            print(f"verdict: validity {verdict['validity']}, ordering {verdict['ordering']}, mechanism "
                  f"{verdict['mechanism']}: {verdict['outcome']}")
        elif args.command == "make-demo-data":
            from .data.demo import make_demo_data

            print(f"demo data written to {make_demo_data(args.dataset_dir)}")
        elif args.command == "prepare-llava-video":
            from .data.llava_video import format_summary, prepare_llava_video

            print(format_summary(prepare_llava_video(
                args.src, args.out, dataset_info=args.dataset_info, max_duration_s=args.max_duration_s,
                probe=args.probe_duration, caps={"0_2m": args.videos_0_2m, "2_3m": args.videos_2_3m},
                seed=args.seed, sources=args.sources.split(",") if args.sources else None,
                video_roots=args.video_root, media_dir=args.media_dir, shard_size=args.shard_size,
                restart=args.restart, progress=not args.no_progress)))
    except (ValueError, FileNotFoundError) as error:
        print(f"videorope-train {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
