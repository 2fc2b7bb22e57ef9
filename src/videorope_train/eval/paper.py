"""Your checkpoints' benchmark scores next to the VideoRoPE paper's, as a table and a plot.

``videorope-train eval paper --run NAME=DIR ... --out OUT`` reads every lmms-eval result file under each DIR
(``*_results.json``; the context comes from the run's ``context=`` model argument, the RoPE variant from the
checkpoint's ``videorope`` block) and every summary of the spliced-embedding harnesses (``summary.json`` written by
``eval vniah`` / ``eval vruler``), and writes ``OUT/paper.md`` and ``OUT/paper.png``: each checkpoint's row under
the paper's row for the same variant. Whatever was run is shown: a context given in tokens (``context=16384`` is
the 16k column, ``context=12000`` a column of its own), tasks the paper does not report (their metrics as lmms-eval
wrote them, "—" in the paper's row), V-RULER subtasks beside V-NIAH.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..files import write_json, write_text
from ..rope import RopeConfig
from .plot import TASK_LABELS as LABELS
from .video import CONTEXTS, context_tokens

# the paper's headline table (Qwen2-VL-7B, docs/method.md): 8k is in-distribution, 16k-64k extrapolation; each
# benchmark's scores in the order of CONTEXTS (8k, 16k, 32k, 64k)
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
NEEDLE_TASKS = ("vniah", "vniah-d")  # the summaries the paper reports; V-RULER's and the stack's follow them


def _model_args(text: str) -> Dict[str, str]:
    return dict(item.split("=", 1) for item in text.split(",") if "=" in item)


def _variant_of(model_dir: Optional[str]) -> Optional[str]:
    rope = RopeConfig.of_model_dir(model_dir) if model_dir else None
    return rope.variant if rope is not None else None


def context_column(context: str) -> str:
    """The column of a ``context=`` argument: a preset's name, also for its token count (``16384`` → ``16k``);
    any other token count as itself (``12000``)."""
    tokens = context_tokens(context)  # the backend's own reading: an unknown value fails with the allowed ones
    return next((name for name, count in CONTEXTS.items() if count == tokens), str(tokens))


def _other_task_scores(task: str, values: dict) -> Dict[str, float]:
    """A task the paper does not report: each number lmms-eval wrote for it, unconverted (its scale is the
    task's own), as ``"TASK METRIC"`` (``"TASK METRIC,FILTER"`` for a filter other than lmms-eval's ``none``)."""
    scores = {}
    for key, value in values.items():
        metric, _, filter_name = key.partition(",")
        if metric.endswith("_stderr") or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        scores[f"{task} {metric if filter_name in ('', 'none') else key}"] = float(value)
    return scores


def collect(run_dir: str | Path) -> dict:
    """{"variant": ..., "scores": {benchmark: {context: score}}, "summaries": {task: percent}}: the paper's
    benchmarks in percent, other lmms-eval tasks under ``"TASK METRIC"`` as written, every summary's average."""
    run_dir = Path(run_dir)
    scores: Dict[str, Dict[str, float]] = {}
    variant = None
    for path in sorted(run_dir.rglob("*_results.json")):
        record = json.loads(path.read_text())
        args = _model_args(str(record.get("config", {}).get("model_args", "")))
        variant = variant or _variant_of(args.get("pretrained"))
        try:
            context = context_column(args.get("context", "8k"))  # the backend's default
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
        for task, values in record.get("results", {}).items():
            if task not in TASKS:
                for name, value in _other_task_scores(task, values).items():
                    scores.setdefault(name, {})[context] = value
                continue
            benchmark, key, factor = TASKS[task]
            if key not in values:
                raise ValueError(f"{path}: task {task} has no {key!r} (got {sorted(values)})")
            scores.setdefault(benchmark, {})[context] = float(values[key]) * factor
    summaries: Dict[str, float] = {}
    for path in sorted(run_dir.rglob("summary.json")):
        summary = json.loads(path.read_text())
        if summary.get("average") is None:
            continue
        summaries[summary.get("task") or "vniah"] = 100.0 * summary["average"]  # one naming no task: V-NIAH
        variant = variant or _variant_of(summary.get("model"))
    if not scores and not summaries:
        raise ValueError(f"{run_dir}: no lmms-eval results (*_results.json) and no V-NIAH / V-RULER summary")
    return {"variant": variant, "scores": scores, "summaries": summaries}


def benchmark_columns(runs: Sequence[Tuple[str, dict]]) -> List[Tuple[str, List[str]]]:
    """[(benchmark, contexts)]: the paper's benchmarks at its contexts and at any other context run, then the other
    tasks run at their contexts; contexts by token count."""
    run_contexts: Dict[str, set] = {}
    for _, run in runs:
        for benchmark, by_context in run["scores"].items():
            run_contexts.setdefault(benchmark, set()).update(by_context)
    columns = []
    for benchmark in (*BENCHMARKS, *sorted(set(run_contexts) - set(BENCHMARKS))):
        contexts = run_contexts.get(benchmark, set()) | (set(CONTEXTS) if benchmark in BENCHMARKS else set())
        columns.append((benchmark, sorted(contexts, key=context_tokens)))
    return columns


def summary_columns(runs: Sequence[Tuple[str, dict]]) -> List[str]:
    """V-NIAH and V-NIAH-D (the paper's), then the other summaries run (V-RULER subtasks, the stack)."""
    others = {task for _, run in runs for task in run["summaries"]} - set(NEEDLE_TASKS)
    return [*NEEDLE_TASKS, *sorted(others)]


def paper_score(variant: Optional[str], benchmark: str, context: Optional[str] = None) -> Optional[float]:
    """The paper's number for a benchmark at a context, or for a summary task (no context); None where it has none."""
    paper = PAPER.get(variant or "", {})
    if context is None:
        return paper.get(benchmark) if benchmark in NEEDLE_TASKS else None
    if benchmark not in BENCHMARKS or context not in CONTEXTS:
        return None
    return paper[benchmark][list(CONTEXTS).index(context)]


def _cell(value: Optional[float]) -> str:
    return "—" if value is None else f"{value:.2f}"


def table(runs: Sequence[Tuple[str, dict]]) -> str:
    """Markdown: per checkpoint its scores, the paper's for its variant, and the difference ("—" where either is
    missing)."""
    benchmarks, summaries = benchmark_columns(runs), summary_columns(runs)
    header = (["model"] + [f"{b} {c}" for b, contexts in benchmarks for c in contexts]
              + [LABELS.get(t, t) for t in summaries])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, run in runs:
        variant = run["variant"]
        ours = ([run["scores"].get(b, {}).get(c) for b, contexts in benchmarks for c in contexts]
                + [run["summaries"].get(t) for t in summaries])
        lines.append("| " + " | ".join([name] + [_cell(v) for v in ours]) + " |")
        if variant not in PAPER:
            continue
        theirs = ([paper_score(variant, b, c) for b, contexts in benchmarks for c in contexts]
                  + [paper_score(variant, t) for t in summaries])
        lines.append("| " + " | ".join([f"paper: {variant}"] + [_cell(v) for v in theirs]) + " |")
        lines.append("| " + " | ".join([f"{name} − paper"] + [
            "—" if o is None or t is None else f"{o - t:+.2f}" for o, t in zip(ours, theirs)]) + " |")
    return "\n".join(lines) + "\n"


def _draw_benchmark(ax, runs, benchmark: str, contexts: List[str], colours: Sequence[str]) -> None:
    """Score against context (categorical, by token count): each checkpoint solid with its values written, the
    paper's curve of each variant that ran the benchmark dashed, once, in the colour of its first run."""
    paper_colours: Dict[str, str] = {}
    for index, (name, run) in enumerate(runs):
        got = run["scores"].get(benchmark, {})
        if not got:
            continue
        colour = colours[index % len(colours)]
        paper_colours.setdefault(run["variant"], colour)
        xs = [i for i, c in enumerate(contexts) if c in got]
        ys = [got[contexts[i]] for i in xs]
        ax.plot(xs, ys, "o-", color=colour, label=name)
        for x, y in zip(xs, ys):
            ax.annotate(f"{y:.1f}", (x, y), textcoords="offset points", xytext=(0, 5), ha="center", fontsize=7,
                        color=colour)
    for variant, colour in paper_colours.items():
        xs = [i for i, c in enumerate(contexts) if paper_score(variant, benchmark, c) is not None]
        if xs:
            ax.plot(xs, [paper_score(variant, benchmark, contexts[i]) for i in xs], "x--", color=colour, alpha=0.6,
                    label=f"paper: {variant}")
    ax.set_title(benchmark)
    ax.set_xticks(range(len(contexts)), contexts)
    ax.set_xlim(-0.5, len(contexts) - 0.5)
    ax.margins(y=0.12)  # room for the values written above the points
    ax.set_xlabel("context (tokens)")
    ax.set_ylabel("accuracy (%)" if benchmark in BENCHMARKS else "score (as lmms-eval wrote it)")
    ax.legend(fontsize=7)


def _draw_summaries(ax, runs, tasks: List[str], colours: Sequence[str]) -> None:
    """Per task run, a bar per checkpoint, each followed by the paper's (hatched) for its variant where the paper
    has the task (once per variant); values written on top, a zero score marked on the axis."""
    labelled = set()
    for position, task in enumerate(tasks):
        bars, variants_drawn = [], set()
        for index, (name, run) in enumerate(runs):
            if task not in run["summaries"]:
                continue
            colour = colours[index % len(colours)]
            bars.append((name, run["summaries"][task], colour, ""))
            paper = paper_score(run["variant"], task)
            if paper is not None and run["variant"] not in variants_drawn:
                variants_drawn.add(run["variant"])
                bars.append((f"paper: {run['variant']}", paper, colour, "//"))
        width = 0.8 / len(bars)
        for slot, (label, value, colour, hatch) in enumerate(bars):
            x = position - 0.4 + width * (slot + 0.5)
            drawn = ax.bar(x, value, width=width, color=colour, hatch=hatch, alpha=0.4 if hatch else 1.0,
                           edgecolor=colour, label=None if label in labelled else label)
            if value == 0:  # a bar of no height draws nothing: a marker on the axis, the value above it
                ax.plot(x, 0, "^", color=colour, markersize=8, clip_on=False)
            ax.bar_label(drawn, fmt="%.1f", fontsize=7, padding=8 if value == 0 else 2)
            labelled.add(label)
    ax.set_title(" / ".join(LABELS.get(t, t) for t in tasks))
    ax.set_xticks(range(len(tasks)), [LABELS.get(t, t) for t in tasks])
    ax.set_xlabel("task")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 110)  # room for the values above a full bar
    ax.legend(fontsize=7)


def draw(runs: Sequence[Tuple[str, dict]]):
    """The figure of ``runs``: a panel per benchmark or task some run has, and one of bars for the summaries run;
    nothing that no run has (returned open, for the caller to save or inspect)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    benchmarks = [(b, contexts) for b, contexts in benchmark_columns(runs)
                  if any(b in run["scores"] for _, run in runs)]
    summaries = [t for t in summary_columns(runs) if any(t in run["summaries"] for _, run in runs)]
    panels = len(benchmarks) + bool(summaries)
    columns = min(panels, 4)
    rows = -(-panels // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 4 * rows), squeeze=False)
    axes = list(axes.flat)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (benchmark, contexts) in zip(axes, benchmarks):
        _draw_benchmark(ax, runs, benchmark, contexts, colours)
    if summaries:
        _draw_summaries(axes[len(benchmarks)], runs, summaries, colours)
    for ax in axes[panels:]:
        ax.remove()
    figure.tight_layout()
    return figure


def plot(runs: Sequence[Tuple[str, dict]], out) -> Path:
    from .plot import save_figure

    return save_figure(draw(runs), out, dpi=100)


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
    write_text(out / "paper.md", markdown)
    write_json(out / "paper.json", dict(collected))
    return plot(collected, out / "paper.png"), markdown
