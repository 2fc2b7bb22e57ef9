"""Result files of the resumable harnesses: the model's identity, the grid of cells a run resumes, its summary +
heatmap.  V-NIAH, each V-RULER subtask and the V-RULER stack are all a ``CellGrid``."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from ..files import write_json


def cell_name(num_frames: int, depth: float) -> str:
    return f"len{num_frames}_depth{depth:g}"


def model_identity(path: str | Path) -> dict:
    path = Path(path)
    files = {}
    for file in sorted(path.iterdir()) if path.is_dir() else []:
        if file.suffix in (".safetensors", ".bin", ".json") and file.is_file():
            stat = file.stat()
            files[file.name] = [stat.st_size, stat.st_mtime_ns] if file.suffix != ".json" else hashlib.sha1(
                file.read_bytes()).hexdigest()
    return {"path": str(path.resolve()), "files": files}


def summarize(out: str | Path, lengths: Sequence[int], depths: Sequence[float], extra: Optional[dict] = None) -> dict:
    """summary.json + heatmap.png of the cells of ``lengths`` × ``depths`` present in ``out/cells``."""
    from .plot import save_heatmap

    out = Path(out)
    cells, missing = [], []
    for n in lengths:
        for d in depths:
            path = out / "cells" / f"{cell_name(n, d)}.json"
            if path.is_file():
                cells.append({"frames": n, "depth": d, "score": json.loads(path.read_text())["score"]})
            else:
                missing.append(cell_name(n, d))
    average = sum(c["score"] for c in cells) / len(cells) if cells else None
    summary = {
        **(extra or {}),
        "lengths": list(lengths),
        "depths": list(depths),
        "average": average,
        "complete": not missing,
        "num_cells": len(cells),
        "missing": missing,
        "cells": cells,
        "heatmap": "heatmap.png",
    }
    write_json(out / "summary.json", summary)
    save_heatmap(out / "heatmap.png", summary, title=(extra or {}).get("name"))
    return summary


class CellGrid:
    """The cells (length × depth) of one run under ``out``, resumable: ``out/run.json`` records what the cells are
    computed with (model, data, settings), ``out/cells/<cell>.json`` holds each finished cell.

    Opening a grid whose finished cells were computed with another record raises — resuming would report another
    model's (or other data's) cells as this run's — unless ``overwrite`` discards them first.
    """

    def __init__(self, out: str | Path, record: dict, what: str, overwrite: bool = False):
        self.out, self.record = Path(out), record
        run_record = self.out / "run.json"
        if overwrite:
            shutil.rmtree(self.out / "cells", ignore_errors=True)
        elif run_record.is_file() and any((self.out / "cells").glob("*.json")):
            old = json.loads(run_record.read_text())
            if old != record:
                changed = sorted(k for k in set(old) | set(record) if old.get(k) != record.get(k))
                raise ValueError(f"{self.out} holds {what} cells computed with other settings (changed: "
                                 f"{', '.join(changed)}); use another --out, or --overwrite to discard them")
        write_json(run_record, record)

    def cell_path(self, length: int, depth: float) -> Path:
        return self.out / "cells" / f"{cell_name(length, depth)}.json"

    def pending(self, lengths: Sequence[int], depths: Sequence[float]) -> List[Tuple[int, float]]:
        """The cells still to compute, in grid order."""
        return [(n, d) for n in lengths for d in depths if not self.cell_path(n, d).is_file()]

    def write_cell(self, length: int, depth: float, task: str, entries: List[dict], key: str = "records") -> None:
        """A finished cell: its per-item ``entries`` (each with ``correct`` 0/1) and their mean as its score."""
        write_json(self.cell_path(length, depth), {
            "frames": length, "depth": depth, "task": task,
            "score": sum(e["correct"] for e in entries) / len(entries), key: entries})

    def summarize(self, lengths: Sequence[int], depths: Sequence[float], extra: Optional[dict] = None) -> dict:
        return summarize(self.out, lengths, depths, extra)
