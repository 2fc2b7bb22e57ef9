"""Result files of the resumable harnesses: the model's identity, a run's summary + heatmap."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional, Sequence

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
