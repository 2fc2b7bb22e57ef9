"""The RoPE core: position ids, frequency allocation and extrapolation of every VideoRoPE-paper variant.

Pure torch (no transformers / LLaMA-Factory import), so other integrations can reuse it.
"""

from .config import EXTRAPOLATIONS, VARIANTS, RopeConfig
from .frequencies import AXIS_H, AXIS_T, AXIS_W, frequency_axes, scaled_inv_freq, yarn_ramp_bounds
from .packing import sequence_local_positions
from .positions import get_rope_index
from .rotary import apply_rotary, reference_rotary_cos_sin, rotary_cos_sin, rotate_half

__all__ = [
    "AXIS_H",
    "AXIS_T",
    "AXIS_W",
    "EXTRAPOLATIONS",
    "VARIANTS",
    "RopeConfig",
    "apply_rotary",
    "frequency_axes",
    "get_rope_index",
    "reference_rotary_cos_sin",
    "rotary_cos_sin",
    "rotate_half",
    "scaled_inv_freq",
    "sequence_local_positions",
    "yarn_ramp_bounds",
]
