"""`RopeConfig`: which position-embedding variant a model uses, and how it extrapolates.

Pure Python: this is the block stored in a hooked model's ``config.json`` under ``"videorope"``, and the one
reader of that block (``RopeConfig.of_model_config`` / ``of_model_dir``) everything else uses.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping, Optional, Union

CONFIG_KEY = "videorope"  # the key of the RoPE block in a hooked model's config.json

VARIANTS = ("vanilla", "tad", "mrope", "mrope-interleaved", "videorope")
EXTRAPOLATIONS = ("ntk", "yarn", "dynamic", "mrope++", "yarn-v")
# Where the authors' code and the paper differ, "code" is what the released checkpoints learned.
FORMS = ("code", "paper")


PROVENANCE_KEY = "written_by"  # {"videorope_train": version, "positions": POSITIONS_VERSION} in a config block


@dataclass(frozen=True)
class RopeConfig:
    """Settings of one RoPE variant.

    Attributes:
        variant: ``"vanilla"`` (1-D RoPE), ``"tad"`` (TAD-RoPE as the authors implemented it),
            ``"mrope"`` (Qwen2-VL M-RoPE), ``"mrope-interleaved"`` (MRoPE-I: M-RoPE's positions with Qwen3-VL's
            interleaved frequency allocation) or ``"videorope"`` (LTA + diagonal layout + ATS).
        temporal_stride: ATS δ, the position step between temporal patches (``videorope`` only).
        extrapolation: ``None`` or one of ``ntk``, ``yarn``, ``dynamic``, ``mrope++``, ``yarn-v``.
        extrapolation_factor: the scale factor s (1.0 = no scaling).
        original_context: the training context L the scaling is relative to.
        text_after_block: ``"code"``: text after a block starts at t_last + 1 = s + δ(T−1) + 1;
            ``"paper"``: s + δ·T (``videorope`` only).
        centering: ``"code"``: spatial offsets −⌊(H−1)/2⌋ (integers); ``"paper"``: −H/2 (half-integers).
        extrapolate_in_training: apply ``extrapolation`` in training mode too (default: inference only).
    """

    variant: str = "videorope"
    temporal_stride: float = 2.0
    extrapolation: Optional[str] = None
    extrapolation_factor: float = 1.0
    original_context: int = 32768
    text_after_block: str = "code"
    centering: str = "code"
    extrapolate_in_training: bool = False

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"RopeConfig.variant={self.variant!r} is unknown; expected one of {VARIANTS}")
        stride = self.temporal_stride
        if isinstance(stride, bool) or not isinstance(stride, (int, float)) or not math.isfinite(stride) or stride <= 0:
            raise ValueError(f"RopeConfig.temporal_stride (ATS δ) must be a finite number > 0, got {stride!r}")
        if self.extrapolation is not None and self.extrapolation not in EXTRAPOLATIONS:
            raise ValueError(
                f"RopeConfig.extrapolation={self.extrapolation!r} is unknown; expected None or one of {EXTRAPOLATIONS}"
            )
        factor = self.extrapolation_factor
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor) or factor < 1:
            raise ValueError(f"RopeConfig.extrapolation_factor (s) must be a finite number >= 1, got {factor!r}")
        if isinstance(self.original_context, bool) or not isinstance(self.original_context, int) or self.original_context < 2:
            raise ValueError(f"RopeConfig.original_context (L) must be an int >= 2, got {self.original_context!r}")
        for name in ("text_after_block", "centering"):
            if getattr(self, name) not in FORMS:
                raise ValueError(f"RopeConfig.{name}={getattr(self, name)!r}; expected one of {FORMS}")
        if self.extrapolation in ("mrope++", "yarn-v") and self.layout not in ("mrope", "videorope"):
            raise ValueError(
                f"extrapolation {self.extrapolation!r} scales the t/h/w axes separately and needs variant "
                f"'mrope', 'mrope-interleaved' or 'videorope', not {self.variant!r}"
            )

    @property
    def positions_are_integer(self) -> bool:
        """Whether every position id is an integer (decides the dtype of ``position_ids``)."""
        if self.variant != "videorope":
            return True
        return float(self.temporal_stride).is_integer() and self.centering == "code"

    @property
    def layout(self) -> str:
        """The position layout: the variant's own, except MRoPE-I, which places tokens as M-RoPE does (it differs in
        which frequencies carry which axis only)."""
        return "mrope" if self.variant == "mrope-interleaved" else self.variant

    @property
    def text_position_step(self) -> int:
        """How far each text token after the prompt moves the position: TAD counts a token twice (its time index
        and its 1-D index both advance), every other variant once.  Decoding uses it."""
        return 2 if self.variant == "tad" else 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "RopeConfig":
        """The settings of a ``videorope`` config block (its ``written_by`` provenance record is not a setting)."""
        values = {key: value for key, value in values.items() if key != PROVENANCE_KEY}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown RoPE setting(s) {unknown}; known settings: {sorted(known)}")
        return cls(**dict(values))

    @classmethod
    def of_model_config(cls, config: Any, where: str = "the model config") -> Optional["RopeConfig"]:
        """The settings in a model config's ``videorope`` block, or None when it has none.

        ``config``: config.json's dict, or a transformers config object (the block is then an attribute).
        """
        block = config.get(CONFIG_KEY) if isinstance(config, Mapping) else getattr(config, CONFIG_KEY, None)
        if block is None or isinstance(block, RopeConfig):
            return block
        if not isinstance(block, Mapping):
            raise ValueError(f"{where}: the '{CONFIG_KEY}' block is a {type(block).__name__}, expected a mapping")
        try:
            return cls.from_dict(block)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{where}: invalid '{CONFIG_KEY}' block: {error}") from None

    @classmethod
    def of_model_dir(cls, model_dir: Union[str, Path]) -> Optional["RopeConfig"]:
        """The settings of ``model_dir/config.json``; None when there is no config.json or no block in it."""
        path = Path(model_dir) / "config.json"
        if not path.is_file():
            return None
        return cls.of_model_config(json.loads(path.read_text()), where=str(path))


def head_dim_of(text_config: Any) -> int:
    """Channels per attention head of a language-model config (dict or object): ``head_dim`` when the config sets
    it (newer Qwen configs do), else hidden_size / num_attention_heads, as transformers' attention modules read it."""
    def get(key):
        return text_config.get(key) if isinstance(text_config, Mapping) else getattr(text_config, key, None)

    head_dim = get("head_dim")
    if head_dim:
        return int(head_dim)
    hidden, heads = get("hidden_size"), get("num_attention_heads")
    if not hidden or not heads:
        raise ValueError("the language-model config sets neither head_dim nor hidden_size and num_attention_heads")
    return int(hidden) // int(heads)
