"""A training recipe: LLaMA-Factory's YAML arguments, with ``key=value`` overrides as its CLI applies them.

Read by the launchers (``launch.py``) and the data checker (``data/check.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import yaml


def load_recipe(path: str | Path, overrides: Iterable[str] = ()) -> dict:
    """The recipe's keys with ``key=value`` overrides applied (values parsed as YAML scalars)."""
    args = yaml.safe_load(Path(path).read_text())
    if not isinstance(args, dict):
        raise ValueError(f"recipe {path}: expected a YAML mapping of LLaMA-Factory arguments, got "
                         f"{type(args).__name__}")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not key=value")
        args[key] = yaml.safe_load(value)
    return args
