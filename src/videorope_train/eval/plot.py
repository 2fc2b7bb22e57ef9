"""V-NIAH heatmaps (length × depth, LongVA's colours): one run, or several runs side by side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

TASK_LABELS = {"vniah": "V-NIAH", "vniah-d": "V-NIAH-D"}  # how titles and tables name the tasks
COLOURS = ["#F0496E", "#EBB839", "#0CD79F"]  # LongVA's V-NIAH colour map: 0 red → 1 green


def score_matrix(summary: dict) -> np.ndarray:
    """[depths, lengths] scores from a summary (NaN where a cell is missing)."""
    lengths, depths = summary["lengths"], summary["depths"]
    matrix = np.full((len(depths), len(lengths)), np.nan)
    col = {n: j for j, n in enumerate(lengths)}
    row = {round(d, 6): i for i, d in enumerate(depths)}
    for cell in summary["cells"]:
        i, j = row.get(round(cell["depth"], 6)), col.get(cell["frames"])
        if i is not None and j is not None:
            matrix[i, j] = cell["score"]
    return matrix


def _frames_label(n: int) -> str:
    return f"{n / 1000:.1f}K" if n >= 1000 else str(n)


def _title(name: Optional[str], summary: dict) -> str:
    average = summary.get("average")
    task = summary.get("task")
    label = TASK_LABELS.get(task, task)
    name = name or Path(str(summary.get("model", ""))).name or "V-NIAH"
    # V-RULER names each subtask's run after the subtask (and the stack "stack"): the name once, as its label
    parts = [label] if task and name.lower() in (task.lower(), label.lower()) else [name] + ([label] if task else [])
    parts.append("avg n/a" if average is None else f"avg {average:.3f}")
    if not summary.get("complete", True):
        parts.append(f"({summary.get('num_cells', 0)} cells)")
    return " · ".join(parts)


def draw_heatmap(ax, summary: dict, title: Optional[str] = None, colorbar: bool = True):
    from matplotlib.colors import LinearSegmentedColormap

    cmap = LinearSegmentedColormap.from_list("vniah", COLOURS).with_extremes(bad="#d9d9d9")  # missing cells grey
    matrix = score_matrix(summary)
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap=cmap, vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    lengths, depths = summary["lengths"], summary["depths"]
    ax.set_xticks(range(len(lengths)), [_frames_label(n) for n in lengths], rotation=45)
    ax.set_yticks(range(len(depths)), [f"{round(d * 100):d}" for d in depths])
    ax.set_xlabel("Num. of frames")
    ax.set_ylabel("Depth (%)")
    ax.set_title(title or _title(None, summary), fontsize=10)
    if matrix.size <= 300:
        for i in range(matrix.shape[0]):
            for j in range(matrix.shape[1]):
                if not np.isnan(matrix[i, j]):
                    ax.text(j, i, f"{matrix[i, j]:.2g}", ha="center", va="center", fontsize=7)
    if colorbar:
        ax.figure.colorbar(image, ax=ax, label="Score")
    return image


def save_heatmap(path, summary: dict, title: Optional[str] = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = summary["lengths"]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(lengths) + 3), 0.45 * len(summary["depths"]) + 3))
    draw_heatmap(ax, summary, _title(title, summary))
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig, path, dpi: int = 120) -> Path:
    """Write ``fig`` to ``path`` (parents created) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def load_summary(run_dir) -> dict:
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (run `videorope-train eval vniah ... --out {run_dir}` first)")
    return json.loads(path.read_text())


def compare_runs(runs: Sequence[Tuple[str, dict]], out) -> Path:
    """One PNG with the heatmaps of ``runs`` = [(name, summary), ...] side by side, averages in the titles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not runs:
        raise ValueError("nothing to compare")
    width = max(4.5, 0.5 * max(len(s["lengths"]) for _, s in runs) + 2)
    height = 0.45 * max(len(s["depths"]) for _, s in runs) + 3
    fig, axes = plt.subplots(1, len(runs), figsize=(width * len(runs) + 1.5, height), squeeze=False,
                             layout="constrained")
    image = None
    for ax, (name, summary) in zip(axes[0], runs):
        image = draw_heatmap(ax, summary, _title(name, summary), colorbar=False)
    fig.colorbar(image, ax=list(axes[0]), label="Score", fraction=0.03)
    return save_figure(fig, out)


def comparison_table(runs: Sequence[Tuple[str, dict]]) -> str:
    """A markdown table: run, task, average, cells."""
    lines = ["| run | task | average | cells |", "|---|---|---|---|"]
    for name, summary in runs:
        average = summary.get("average")
        lines.append(f"| {name} | {summary.get('task', '')} | {'n/a' if average is None else f'{average:.4f}'} | "
                     f"{summary.get('num_cells', len(summary.get('cells', [])))} |")
    return "\n".join(lines)


def parse_named(values: Sequence[str], what: str) -> List[Tuple[str, str]]:
    """["NAME=PATH", ...] → [(NAME, PATH), ...]; a bare PATH is named after its last component."""
    pairs = []
    for value in values:
        name, sep, path = value.partition("=")
        if not sep:
            name, path = Path(value.rstrip("/")).name, value
        if not name or not path:
            raise ValueError(f"{what} must be NAME=PATH, got {value!r}")
        pairs.append((name, path))
    names = [n for n, _ in pairs]
    if len(set(names)) != len(names):
        raise ValueError(f"{what} names must be unique, got {names}")
    return pairs
