"""`prepare-model`: turn a stock Qwen2-VL directory into a hooked one (links, a config block, remote code)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..rope import RopeConfig, scaled_inv_freq
from .qwen2_vl import CONFIG_KEY, HOOKED_MODEL_TYPE

REMOTE_MODULE = "modeling_videorope"
CONFIG_CLASS = "VideoRopeQwen2VLConfig"
MODEL_CLASS = "VideoRopeQwen2VLForConditionalGeneration"
AUTO_MAP = {
    "AutoConfig": f"{REMOTE_MODULE}.{CONFIG_CLASS}",
    # LLaMA-Factory loads a config class it does not know through AutoModelForCausalLM.
    "AutoModelForCausalLM": f"{REMOTE_MODULE}.{MODEL_CLASS}",
    "AutoModelForImageTextToText": f"{REMOTE_MODULE}.{MODEL_CLASS}",
}

REMOTE_CODE = f'''"""Remote code of a VideoRoPE-hooked Qwen2-VL (written by `videorope-train prepare-model`).

The implementation is the installed `videorope_train` package (pip install it next to LLaMA-Factory); the
RoPE settings are the "{CONFIG_KEY}" block of config.json.  Classes are subclassed here so that
`save_pretrained` copies this file into every checkpoint, keeping checkpoints self-describing.
"""

from videorope_train.hook import qwen2_vl as _hook


class {CONFIG_CLASS}(_hook.{CONFIG_CLASS}):
    pass


class {MODEL_CLASS}(_hook.{MODEL_CLASS}):
    config_class = {CONFIG_CLASS}


{CONFIG_CLASS}.register_for_auto_class()
{MODEL_CLASS}.register_for_auto_class("AutoModelForImageTextToText")
'''


def _validate_base(config: dict, base: Path) -> None:
    if config.get("model_type") not in ("qwen2_vl", HOOKED_MODEL_TYPE):
        raise ValueError(f"{base}/config.json: model_type {config.get('model_type')!r} is not Qwen2-VL ('qwen2_vl')")
    text = config.get("text_config") or config
    heads = text.get("num_attention_heads")
    hidden = text.get("hidden_size")
    rope = text.get("rope_parameters") or text.get("rope_scaling") or {}
    section = rope.get("mrope_section")
    if not (heads and hidden and section):
        raise ValueError(f"{base}/config.json lacks hidden_size / num_attention_heads / mrope_section")
    scaled_inv_freq(RopeConfig("mrope"), head_dim=hidden // heads, mrope_section=section)  # raises on mismatch


def prepare_model(base: str | Path, out: str | Path, rope: RopeConfig, copy: bool = False) -> Path:
    """Write a hooked model directory ``out`` for ``base``.

    Every file of ``base`` except config.json is symlinked (copied with ``copy=True``), so 7B weights are not
    duplicated; config.json gets the ``videorope`` block, the ``auto_map`` and the hooked model_type.
    Re-preparing a hooked directory replaces its RoPE settings.
    """
    base, out = Path(base).resolve(), Path(out)
    config_path = base / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} does not exist (expected a Qwen2-VL model directory)")
    config = json.loads(config_path.read_text())
    _validate_base(config, base)
    if out.resolve() == base:
        raise ValueError("--out must differ from --base (the base directory is left untouched)")
    out.mkdir(parents=True, exist_ok=True)
    for source in sorted(base.iterdir()):
        if source.name in ("config.json", f"{REMOTE_MODULE}.py") or source.name.startswith("."):
            continue
        target = out / source.name
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.is_dir():
            shutil.rmtree(target)
        if copy:
            (shutil.copytree if source.is_dir() else shutil.copy2)(source, target)
        else:
            os.symlink(source.resolve(), target)
    config.update(
        model_type=HOOKED_MODEL_TYPE,
        architectures=[MODEL_CLASS],
        auto_map=dict(AUTO_MAP),
        **{CONFIG_KEY: rope.to_dict()},
    )
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (out / f"{REMOTE_MODULE}.py").write_text(REMOTE_CODE)
    return out
