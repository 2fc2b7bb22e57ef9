"""Atomic file writes: a reader (or a resumed job) sees the old file or the new one, never half of one.

A leaf module (nothing of the package): result files, caches, converter shards and state files all go through it.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional


@contextmanager
def atomic_output(path: str | Path, scratch: Optional[str | Path] = None) -> Iterator[Path]:
    """A temporary path to write; it replaces ``path`` when the block ends, and is removed if the block raises.

    The temporary file lies in ``scratch`` (default: ``path``'s folder), which must be on the same file system; give
    one when ``path``'s folder is read as a whole (LLaMA-Factory loads every file of a dataset folder).
    """
    path = Path(path)
    folder = Path(scratch) if scratch is not None else path.parent
    folder.mkdir(parents=True, exist_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = folder / f".{path.name}.{os.getpid()}.tmp"
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_text(path: str | Path, text: str, scratch: Optional[str | Path] = None) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    with atomic_output(path, scratch) as temporary:
        temporary.write_text(text, encoding="utf-8")


def write_json(path: str | Path, value, scratch: Optional[str | Path] = None, **dumps_options) -> None:
    """Write ``value`` as JSON (``json.dumps(value, indent=1, **dumps_options)`` and a newline) atomically."""
    write_text(path, json.dumps(value, **{"indent": 1, **dumps_options}) + "\n", scratch)
