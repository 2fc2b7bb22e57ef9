"""Your checkpoints' benchmark scores next to the VideoRoPE paper's, as a table and a plot.

``videorope-train eval paper --run NAME=DIR ... --out OUT`` reads every lmms-eval result file under each DIR
(``*_results.json``; the context comes from the run's ``context=`` model argument, the RoPE variant from the
checkpoint's ``videorope`` block) and V-NIAH / V-NIAH-D summaries (``summary.json`` written by ``eval vniah``), and
writes ``OUT/paper.md`` and ``OUT/paper.png``: each checkpoint's row under the paper's row for the same variant.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..files import write_json
from ..rope import RopeConfig

CONTEXTS = ("8k", "16k", "32k", "64k")
# the paper's headline table (Qwen2-VL-7B, docs/method.md): 8k is in-distribution, 16k-64k extrapolation
PAPER = {
    "vanilla": {"longvideobench": (54.97, 54.87, 54.56, 54.04), "mlvu": (63.31, 65.79, 65.93, 62.02),
                "videomme": (60.67, 60.00, 61.33, 58.33), "vniah": 31.78, "vniah-d": 30.22},
    "tad": {"longvideobench": (54.14, 55.08, 53.94, 53.42), "mlvu": (63.67, 65.28, 65.28, 60.73),
            "videomme": (60.33, 61.33, 62.00, 58.67), "vniah": 29.33, "vniah-d": 29.56},
    "mrope": {"longvideobench": (53.42, 52.80, 53.11, 54.35), "mlvu": (60.41, 60.68, 61.56, 61.10),
              "videomme": (60.67, 59.67, 61.00, 59.67), "vniah": 78.67, "vniah-d": 74.67},
    "videorope": {"longvideobench": (54.46, 55.29, 57.15, 57.26), "mlvu": (65.19, 66.29, 66.02, 65.56),
                  "videomme": (61.33, 61.00, 61.67, 61.33), "vniah": 91.11, "vniah-d": 87.11},
}
# lmms-eval task -> (benchmark, metric key, factor to percent)
TASKS = {
    "longvideobench_val_v": ("longvideobench", "lvb_acc,none", 100.0),  # its aggregate is a fraction
    "mlvu_dev": ("mlvu", "mlvu_percetion_score,none", 1.0),  # (sic: lmms-eval's metric name)
    "videomme": ("videomme", "videomme_perception_score,none", 1.0),
}
BENCHMARKS = ("longvideobench", "mlvu", "videomme")


def _model_args(text: str) -> Dict[str, str]:
    return dict(item.split("=", 1) for item in text.split(",") if "=" in item)


def _variant_of(model_dir: Optional[str]) -> Optional[str]:
    rope = RopeConfig.of_model_dir(model_dir) if model_dir else None
    return rope.variant if rope is not None else None


def collect(run_dir: str | Path) -> dict:
    """{"variant": ..., "scores": {benchmark: {context: percent}}, "vniah": percent, "vniah-d": percent}."""
    run_dir = Path(run_dir)
    scores: Dict[str, Dict[str, float]] = {}
    variant = None
    for path in sorted(run_dir.rglob("*_results.json")):
        record = json.loads(path.read_text())
        args = _model_args(str(record.get("config", {}).get("model_args", "")))
        variant = variant or _variant_of(args.get("pretrained"))
        context = args.get("context", "8k")
        for task, values in record.get("results", {}).items():
            if task not in TASKS:
                continue
            benchmark, key, factor = TASKS[task]
            if key not in values:
                raise ValueError(f"{path}: task {task} has no {key!r} (got {sorted(values)})")
            scores.setdefault(benchmark, {})[context] = float(values[key]) * factor
    out = {"variant": variant, "scores": scores}
    for path in sorted(run_dir.rglob("summary.json")):
        summary = json.loads(path.read_text())
        if summary.get("average") is None:
            continue
        task = "vniah-d" if summary.get("task") == "vniah-d" else "vniah"
        out[task] = 100.0 * summary["average"]
        variant = out["variant"] = out["variant"] or _variant_of(summary.get("model"))
    if not scores and "vniah" not in out and "vniah-d" not in out:
        raise ValueError(f"{run_dir}: no lmms-eval results (*_results.json) of {sorted(TASKS)} and no V-NIAH summary")
    return out


def _cell(value: Optional[float]) -> str:
    return "—" if value is None else f"{value:.2f}"


def table(runs: Sequence[Tuple[str, dict]]) -> str:
    """Markdown: per checkpoint its scores, the paper's for its variant, and the difference."""
    header = ["model"] + [f"{b} {c}" for b in BENCHMARKS for c in CONTEXTS] + ["V-NIAH", "V-NIAH-D"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, run in runs:
        paper = PAPER.get(run["variant"] or "")
        ours = [run["scores"].get(b, {}).get(c) for b in BENCHMARKS for c in CONTEXTS] + [run.get("vniah"),
                                                                                          run.get("vniah-d")]
        lines.append("| " + " | ".join([name] + [_cell(v) for v in ours]) + " |")
        if paper is None:
            continue
        theirs = [paper[b][i] for b in BENCHMARKS for i in range(len(CONTEXTS))] + [paper["vniah"], paper["vniah-d"]]
        lines.append("| " + " | ".join([f"paper: {run['variant']}"] + [_cell(v) for v in theirs]) + " |")
        lines.append("| " + " | ".join([f"{name} − paper"] + [
            "—" if o is None else f"{o - t:+.2f}" for o, t in zip(ours, theirs)]) + " |")
    return "\n".join(lines) + "\n"


def plot(runs: Sequence[Tuple[str, dict]], out) -> Path:
    """One panel per benchmark: score against context, each checkpoint solid, the paper's variant dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plot import save_figure

    figure, axes = plt.subplots(1, len(BENCHMARKS) + 1, figsize=(5 * (len(BENCHMARKS) + 1), 4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (name, run) in enumerate(runs):
        colour = colours[index % len(colours)]
        paper = PAPER.get(run["variant"] or "")
        for ax, benchmark in zip(axes, BENCHMARKS):
            got = run["scores"].get(benchmark, {})
            xs = [i for i, c in enumerate(CONTEXTS) if c in got]
            if xs:
                ax.plot(xs, [got[CONTEXTS[i]] for i in xs], "o-", color=colour, label=name)
            if paper:
                ax.plot(range(len(CONTEXTS)), paper[benchmark], "x--", color=colour, alpha=0.6,
                        label=f"paper {run['variant']}")
        for offset, task in enumerate(("vniah", "vniah-d")):
            x = 2 * index + offset * 0.8
            if run.get(task) is not None:
                axes[-1].bar(x, run[task], width=0.35, color=colour, label=f"{name} {task}" if not offset else None)
            if paper:
                axes[-1].bar(x + 0.35, paper[task], width=0.35, color=colour, alpha=0.4, hatch="//")
    for ax, benchmark in zip(axes, BENCHMARKS):
        ax.set_title(benchmark)
        ax.set_xticks(range(len(CONTEXTS)), CONTEXTS)
        ax.set_xlabel("context")
        ax.set_ylabel("accuracy (%)")
        ax.legend(fontsize=7)
    axes[-1].set_title("V-NIAH / V-NIAH-D (hatched: paper)")
    axes[-1].set_ylim(0, 100)
    figure.tight_layout()
    return save_figure(figure, out, dpi=100)


def paper_comparison(runs: Sequence[Tuple[str, str]], out, variants: Optional[Dict[str, str]] = None
                     ) -> Tuple[Path, str]:
    """Collect ``[(name, dir)]``, write ``out/paper.md`` and ``out/paper.png``; returns (png, markdown)."""
    collected: List[Tuple[str, dict]] = []
    for name, directory in runs:
        run = collect(directory)
        if variants and name in variants:
            run["variant"] = variants[name]
        if run["variant"] not in PAPER:
            raise ValueError(f"{name}: RoPE variant {run['variant']!r} unknown (give --variant {name}=VARIANT, one "
                             f"of {sorted(PAPER)})")
        collected.append((name, run))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    markdown = table(collected)
    (out / "paper.md").write_text(markdown)
    write_json(out / "paper.json", dict(collected))
    return plot(collected, out / "paper.png"), markdown
