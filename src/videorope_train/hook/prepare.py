"""`prepare-model`: turn a stock Qwen2-VL / Qwen2.5-VL / Qwen3-VL directory into a hooked one (links, a config
block, remote code)."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..rope import CONFIG_KEY, RopeConfig, head_dim_of, scaled_inv_freq
from ..video import VideoBudget
from .common import config_block, hooked_model_type

REMOTE_MODULE = "modeling_videorope"
VIDEO_PROCESSOR_CLASS = "VideoRopeVideoProcessor"


@dataclass(frozen=True)
class Family:
    """A supported model family: its stock model_type, hooked marker and class names."""

    model_type: str
    hook_module: str  # videorope_train.hook.<hook_module>
    prefix: str  # class-name prefix, e.g. VideoRopeQwen2VL
    video_processor: str = VIDEO_PROCESSOR_CLASS  # the budget-applying processor of hook/video_processor.py
    stock_variant: str = "mrope"  # the variant that equals the stock model (Qwen3-VL: interleaved M-RoPE)

    @property
    def config_class(self) -> str:
        return f"{self.prefix}Config"

    @property
    def model_class(self) -> str:
        return f"{self.prefix}ForConditionalGeneration"

    def auto_map(self) -> dict:
        return {
            "AutoConfig": f"{REMOTE_MODULE}.{self.config_class}",
            # LLaMA-Factory loads a config class it does not know through AutoModelForCausalLM.
            "AutoModelForCausalLM": f"{REMOTE_MODULE}.{self.model_class}",
            "AutoModelForImageTextToText": f"{REMOTE_MODULE}.{self.model_class}",
        }

    def remote_code(self) -> str:
        return f'''"""Remote code of a VideoRoPE-hooked {self.model_type} model (written by `videorope-train prepare-model`).

The implementation is the installed `videorope_train` package (pip install it next to LLaMA-Factory); the
RoPE settings are the "{CONFIG_KEY}" block of config.json.  Classes are subclassed here so that
`save_pretrained` copies this file into every checkpoint, keeping checkpoints self-describing.
"""

from videorope_train import stop_callback as _stop
from videorope_train.hook import {self.hook_module} as _hook
from videorope_train.hook import video_processor as _video

_stop.register()  # the name the launchers add to report_to: the training side's stop-on-request callback


class {self.config_class}(_hook.{self.config_class}):
    pass


class {VIDEO_PROCESSOR_CLASS}(_video.{self.video_processor}):
    pass


class {self.model_class}(_hook.{self.model_class}):
    config_class = {self.config_class}


{self.config_class}.register_for_auto_class()
{self.model_class}.register_for_auto_class("AutoModelForImageTextToText")
{VIDEO_PROCESSOR_CLASS}.register_for_auto_class("AutoVideoProcessor")
'''


FAMILIES = {
    family.model_type: family
    for family in (Family("qwen2_vl", "qwen2_vl", "VideoRopeQwen2VL"),
                   Family("qwen2_5_vl", "qwen2_5_vl", "VideoRopeQwen2_5_VL"),
                   Family("qwen3_vl", "qwen3_vl", "VideoRopeQwen3VL", "VideoRopeQwen3VLVideoProcessor", "mrope-interleaved"),
                   Family("qwen3_vl_moe", "qwen3_vl_moe", "VideoRopeQwen3VLMoe", "VideoRopeQwen3VLVideoProcessor",
                          "mrope-interleaved"))
}


def family_of(config: dict, where: Path) -> Family:
    model_type = str(config.get("model_type", "")).removesuffix(hooked_model_type(""))
    if model_type not in FAMILIES:
        raise ValueError(
            f"{where}/config.json: model_type {config.get('model_type')!r} is not supported; "
            f"expected one of {sorted(FAMILIES)}"
        )
    return FAMILIES[model_type]


def _validate_base(config: dict, base: Path) -> None:
    text = config.get("text_config") or config
    rope = text.get("rope_parameters") or text.get("rope_scaling") or {}
    section = rope.get("mrope_section")
    if not section:
        raise ValueError(f"{base}/config.json lacks mrope_section (rope_parameters / rope_scaling)")
    try:
        head_dim = head_dim_of(text)
    except ValueError as error:
        raise ValueError(f"{base}/config.json: {error}") from None
    scaled_inv_freq(RopeConfig("mrope"), head_dim=head_dim, mrope_section=section)  # raises on mismatch


def token_pixels(base: str | Path) -> int:
    """Pixels one visual token covers in ``base``'s vision tower: (patch_size · spatial_merge_size)²."""
    path = Path(base) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (expected a stock Qwen-VL model directory)")
    vision = json.loads(path.read_text()).get("vision_config") or {}
    patch, merge = vision.get("patch_size"), vision.get("spatial_merge_size")
    if not patch or not merge:
        raise ValueError(f"{base}/config.json: vision_config lacks patch_size or spatial_merge_size")
    return (int(patch) * int(merge)) ** 2


def _video_processor_files(base: Path, budget: VideoBudget) -> dict[str, dict]:
    """The processor config file to rewrite so that the budget-applying video processor is loaded.

    transformers reads the video processor from processor_config.json's "video_processor" section, else
    video_preprocessor_config.json, else preprocessor_config.json (the image processor's settings).
    """

    def hooked(section: dict) -> dict:
        section = {k: v for k, v in section.items() if k not in ("image_processor_type", "processor_class")}
        section.update(
            video_processor_type=VIDEO_PROCESSOR_CLASS,
            auto_map={"AutoVideoProcessor": f"{REMOTE_MODULE}.{VIDEO_PROCESSOR_CLASS}"},
            video_budget=budget.to_dict(),
        )
        return section

    processor = base / "processor_config.json"
    if processor.is_file():
        config = json.loads(processor.read_text())
        if "video_processor" in config:
            config["video_processor"] = hooked(config["video_processor"])
            return {processor.name: config}
    for name in ("video_preprocessor_config.json", "preprocessor_config.json"):
        if (base / name).is_file():
            return {"video_preprocessor_config.json": hooked(json.loads((base / name).read_text()))}
    raise ValueError(f"{base} has no processor configuration (processor_config.json / preprocessor_config.json)")


def prepare_model(base: str | Path, out: str | Path, rope: RopeConfig, copy: bool = False,
                  video_budget: VideoBudget | None = None) -> Path:
    """Write a hooked model directory ``out`` for ``base``.

    Every file of ``base`` except config.json (and the processor config a ``video_budget`` changes) is
    symlinked (copied with ``copy=True``), so 7B weights are not duplicated; config.json gets the ``videorope``
    block, the ``auto_map`` and the hooked model_type.  With ``video_budget`` the processor applies the
    authors' per-video pixel budget (``hook/video_processor.py``).  Re-preparing replaces the settings.
    """
    base, out = Path(base).resolve(), Path(out)
    config_path = base / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} does not exist (expected a stock Qwen-VL model directory)")
    config = json.loads(config_path.read_text())
    family = family_of(config, base)
    _validate_base(config, base)
    if out.resolve() == base:
        raise ValueError("--out must differ from --base (the base directory is left untouched)")
    rewritten = _video_processor_files(base, video_budget) if video_budget is not None else {}
    out.mkdir(parents=True, exist_ok=True)
    for source in sorted(base.iterdir()):
        if source.name in ("config.json", f"{REMOTE_MODULE}.py", *rewritten) or source.name.startswith("."):
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
        model_type=hooked_model_type(family.model_type),
        architectures=[family.model_class],
        auto_map=family.auto_map(),
        **{CONFIG_KEY: config_block(rope)},
    )
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for name, content in rewritten.items():
        (out / name).write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
    (out / f"{REMOTE_MODULE}.py").write_text(family.remote_code())
    return out
