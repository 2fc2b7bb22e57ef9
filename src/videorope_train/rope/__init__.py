"""The RoPE core: position ids, frequency allocation and extrapolation of every VideoRoPE-paper variant.

Pure torch (no transformers / LLaMA-Factory import; Triton only for the optional fused GPU kernel), so other
integrations can reuse it.
"""

from .config import CONFIG_KEY, EXTRAPOLATIONS, PROVENANCE_KEY, VARIANTS, RopeConfig, head_dim_of
from .frequencies import AXIS_H, AXIS_T, AXIS_W, frequency_axes, scaled_inv_freq, yarn_ramp_bounds
from .packing import sequence_local_positions, varlen_boundaries
from .positions import POSITIONS_VERSION, get_rope_index
from .rotary import (
    ROTARY_ENV,
    apply_rotary,
    apply_rotary_eager,
    rotary_cos_sin,
    rotary_mode,
    rotate_half,
    uses_fused_rotary,
)

__all__ = [
    "AXIS_H",
    "AXIS_T",
    "AXIS_W",
    "CONFIG_KEY",
    "EXTRAPOLATIONS",
    "POSITIONS_VERSION",
    "PROVENANCE_KEY",
    "VARIANTS",
    "RopeConfig",
    "ROTARY_ENV",
    "apply_rotary",
    "apply_rotary_eager",
    "frequency_axes",
    "head_dim_of",
    "get_rope_index",
    "rotary_cos_sin",
    "rotary_mode",
    "rotate_half",
    "scaled_inv_freq",
    "sequence_local_positions",
    "uses_fused_rotary",
    "varlen_boundaries",
    "yarn_ramp_bounds",
]
