"""Checks a launcher runs before any GPU time is spent: can this node run the recipe's attention?

LLaMA-Factory answers ``flash_attn: fa2`` on a node where transformers cannot use flash-attn with a warning and
trains with sdpa instead: the same job, silently slower and with another memory footprint.  The launchers
(``launch-plan``) stop instead, before training, with what to install.
"""

from __future__ import annotations

import importlib.util
from importlib import metadata
from typing import Optional

FLASH_ATTN_INSTALL = (
    "pip install flash-attn==2.8.3 --no-build-isolation (the official prebuilt wheels match torch 2.8; a wheel built "
    "for another torch fails to load), or set flash_attn: sdpa in the recipe"
)


def flash_attention_problem(args: dict) -> Optional[str]:
    """Why the recipe's ``flash_attn: fa2`` cannot run on this node, or None when it can (or is not asked for)."""
    if str(args.get("flash_attn", "auto")).lower() != "fa2":
        return None
    if importlib.util.find_spec("flash_attn") is None:
        return f"the recipe sets flash_attn: fa2 but flash-attn is not installed; {FLASH_ATTN_INSTALL}"
    try:
        from flash_attn import flash_attn_func, flash_attn_varlen_func  # noqa: F401  (loads the CUDA extension)
    except Exception as error:  # noqa: BLE001 -- an ABI mismatch shows up as an ImportError/OSError of any kind
        import torch

        return (f"the recipe sets flash_attn: fa2 but flash-attn {_version('flash_attn')} does not load with torch "
                f"{torch.__version__} ({type(error).__name__}: {error}); {FLASH_ATTN_INSTALL}")
    from transformers.utils import is_flash_attn_2_available

    if not is_flash_attn_2_available():
        return (f"the recipe sets flash_attn: fa2 but transformers {_version('transformers')} cannot use flash-attn "
                f"{_version('flash_attn')} here: it needs a visible CUDA device and flash-attn >= 2.3.3 "
                f"(CUDA_VISIBLE_DEVICES, driver); {FLASH_ATTN_INSTALL}")
    return None


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "?"
