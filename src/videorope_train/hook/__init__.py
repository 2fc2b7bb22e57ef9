"""The Qwen2-VL / Qwen2.5-VL / Qwen3-VL (dense and MoE) hook: loading a prepared model directory with `trust_remote_code=True` runs these classes.

Supported versions are checked here, at import, so an unsupported stack fails before any compute is spent.
Importing the hook changes nothing global (no transformers table or function is patched); the remote code of a
prepared model also registers the training side's stop callback by name (``stop_callback.register``).
"""

import os
from importlib import metadata

from packaging.specifiers import SpecifierSet

SUPPORTED = {
    # package: the versions supported, as pyproject.toml declares them (tests/test_packaging.py keeps the two equal)
    # transformers: 5.6.0 is the newest LLaMA-Factory 0.9.5 (the registry's) accepts (its flash-attention crash is
    # guarded in compat.py); 5.8.0 the newest LLaMA-Factory's main branch accepts. Every release in between is pinned
    # in tests/contracts/; CI runs the hook and RoPE tests at both ends.
    "transformers": ">=5.6.0,<=5.8.0",
    "llamafactory": ">=0.9.5,<=0.9.6.dev0",  # 0.9.5, or the main branch (0.9.6.dev0)
}


def check_versions() -> None:
    """Raise ImportError when an installed framework is outside the tested range."""
    if os.environ.get("VIDEOROPE_SKIP_VERSION_CHECK") == "1":
        return
    for package, supported in SUPPORTED.items():
        try:
            installed = metadata.version(package)
        except metadata.PackageNotFoundError:
            if package == "transformers":
                raise ImportError("videorope_train.hook needs transformers (pip install -r requirements.txt)")
            continue  # LLaMA-Factory is optional for plain-transformers use
        if not SpecifierSet(supported).contains(installed, prereleases=True):
            raise ImportError(
                f"videorope_train supports {package} {supported} but {installed} is installed; install the "
                f"tested set with `pip install -r requirements.txt` (or set VIDEOROPE_SKIP_VERSION_CHECK=1 at your risk)"
            )


check_versions()

from .common import CONFIG_KEY, rope_config_of  # noqa: E402
from .qwen2_5_vl import (  # noqa: E402
    VideoRopeQwen2_5_VLConfig,
    VideoRopeQwen2_5_VLForConditionalGeneration,
    VideoRopeQwen2_5_VLModel,
)
from .qwen2_vl import (  # noqa: E402
    VideoRopeQwen2VLConfig,
    VideoRopeQwen2VLForConditionalGeneration,
    VideoRopeQwen2VLModel,
)
from .qwen3_vl import (  # noqa: E402
    VideoRopeQwen3VLConfig,
    VideoRopeQwen3VLForConditionalGeneration,
    VideoRopeQwen3VLModel,
)
from .qwen3_vl_moe import (  # noqa: E402
    VideoRopeQwen3VLMoeConfig,
    VideoRopeQwen3VLMoeForConditionalGeneration,
    VideoRopeQwen3VLMoeModel,
)

__all__ = [
    "CONFIG_KEY",
    "VideoRopeQwen2_5_VLConfig",
    "VideoRopeQwen2_5_VLForConditionalGeneration",
    "VideoRopeQwen2_5_VLModel",
    "VideoRopeQwen2VLConfig",
    "VideoRopeQwen2VLForConditionalGeneration",
    "VideoRopeQwen2VLModel",
    "VideoRopeQwen3VLConfig",
    "VideoRopeQwen3VLForConditionalGeneration",
    "VideoRopeQwen3VLModel",
    "VideoRopeQwen3VLMoeConfig",
    "VideoRopeQwen3VLMoeForConditionalGeneration",
    "VideoRopeQwen3VLMoeModel",
    "check_versions",
    "rope_config_of",
]
