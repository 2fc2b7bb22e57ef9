"""Several checkpoints (one per RoPE variant, say) through the same V-NIAH harness, drawn side by side."""

from __future__ import annotations

import gc
import json
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from .plot import compare_runs, comparison_table, load_summary
from .vniah import VNIAHSettings, run_vniah


def compare_dirs(runs: Sequence[Tuple[str, str]], out) -> Tuple[Path, str]:
    """Heatmaps of finished runs ``[(name, result_dir)]`` side by side in ``out`` (PNG); returns (path, table)."""
    summaries = [(name, load_summary(path)) for name, path in runs]
    return compare_runs(summaries, out), comparison_table(summaries)


def sweep(
    models: Sequence[Tuple[str, str]],
    haystack,
    needles,
    out,
    settings: Optional[VNIAHSettings] = None,
    distractors=None,
    cache_dir=None,
    overwrite: bool = False,
    progress: bool = True,
    load_kwargs: Optional[dict] = None,
) -> Tuple[Path, List[Tuple[str, dict]]]:
    """Run the harness for every ``(name, model_dir)`` into ``out/NAME`` (resumable), then draw
    ``out/compare.png`` and write ``out/compare.json``.  One embedding cache (``out/cache``) serves all the
    checkpoints: embeddings are keyed by the vision tower's weights, so checkpoints fine-tuned with a frozen
    tower (LLaMA-Factory's default) encode the haystack once."""
    import torch

    out = Path(out)
    cache = Path(cache_dir) if cache_dir is not None else out / "cache"
    summaries = []
    for name, model in models:
        summary = run_vniah(model, haystack, needles, out / name, settings, distractors=distractors, cache_dir=cache,
                            overwrite=overwrite, progress=progress, load_kwargs=load_kwargs, name=name)
        summaries.append((name, summary))
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    path = compare_runs(summaries, out / "compare.png")
    (out / "compare.json").write_text(json.dumps(
        {name: {"model": str(model), "average": s["average"], "task": s.get("task"), "complete": s["complete"]}
         for (name, model), (_, s) in zip(models, summaries)}, indent=1) + "\n")
    return path, summaries
