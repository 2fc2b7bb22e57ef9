"""Lets transformers accept the flash_attn package of tools/torch_flash_attn on a machine without CUDA.

transformers takes flash-attn 2 only when the package is installed *and* a CUDA/MLU device exists
(``is_flash_attn_2_available``, ``FLASH_ATTENTION_COMPATIBILITY_MATRIX``).  ``install()`` puts that folder on
``sys.path`` (so ``find_spec`` and ``importlib.metadata`` see the stand-in exactly as they see a real install) and
replaces only the device part of that probe: the package and version checks still run.  The one other device
assumption is that mixed precision means CUDA autocast (``get_target_dtype`` casts float32 q/k/v to the autocast
dtype only when ``torch.is_autocast_enabled("cuda")``); here the CPU is the device, so its autocast counts too.  Everything downstream —
LLaMA-Factory's ``flash_attn: fa2`` handling, ``attn_implementation="flash_attention_2"``, transformers' integration —
is the real code.  ``sitecustomize.py`` calls it in subprocesses started with this folder on PYTHONPATH.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

FLASH_ATTN_DIR = str(Path(__file__).resolve().parents[2] / "tools" / "torch_flash_attn")
_installed = False


def install() -> None:
    global _installed
    if _installed:
        return
    if FLASH_ATTN_DIR not in sys.path:
        sys.path.insert(0, FLASH_ATTN_DIR)
    importlib.invalidate_caches()

    import torch
    from packaging.version import Version
    from transformers import modeling_flash_attention_utils as fa_utils
    from transformers.utils import import_utils

    import_utils.PACKAGE_DISTRIBUTION_MAPPING.update(importlib.metadata.packages_distributions())
    original = import_utils.is_flash_attn_2_available

    def is_flash_attn_2_available() -> bool:  # transformers' own check, less "and a CUDA device exists"
        found, version = import_utils._is_package_available("flash_attn", return_version=True)
        distributions = [name.replace("_", "-") for name in import_utils.PACKAGE_DISTRIBUTION_MAPPING["flash_attn"]]
        return found and "flash-attn" in distributions and Version(version) >= Version("2.3.3")

    for module in list(sys.modules.values()):  # every module that bound the original by name
        # __dict__, not getattr: transformers' lazy modules would resolve (and warn about) every alias
        if module is not None and module.__name__.startswith("transformers") \
                and vars(module).get("is_flash_attn_2_available") is original:
            setattr(module, "is_flash_attn_2_available", is_flash_attn_2_available)
    from transformers.integrations import flash_attention

    cuda_target_dtype = flash_attention.get_target_dtype

    def get_target_dtype(query, module):
        if query.dtype == torch.float32 and torch.is_autocast_enabled("cpu"):
            return torch.get_autocast_dtype("cpu")
        return cuda_target_dtype(query, module)

    flash_attention.get_target_dtype = get_target_dtype
    fa2 = fa_utils.FLASH_ATTENTION_COMPATIBILITY_MATRIX[2]
    fa2["general_availability_check"] = is_flash_attn_2_available
    fa2["supported_devices"] = (*fa2["supported_devices"], (lambda: True, "cpu"))
    _installed = True
