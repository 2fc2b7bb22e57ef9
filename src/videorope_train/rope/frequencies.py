"""Which rotary frequency carries which axis, and the (extrapolation-)scaled inverse frequencies.

Rotation is NeoX style: frequency n rotates channel pair (n, n + head_dim/2).  Frequency n is
θ_n = β^(−2n/d) (n = 0 is the highest frequency).  Pure torch.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch

from .config import RopeConfig

AXIS_T, AXIS_H, AXIS_W = 0, 1, 2


def _check_section(mrope_section: Sequence[int], head_dim: Optional[int] = None) -> tuple:
    section = tuple(int(v) for v in mrope_section)
    if len(section) != 3 or min(section) < 1:
        raise ValueError(f"mrope_section must be three positive counts (t, h, w), got {tuple(mrope_section)}")
    if head_dim is not None:
        if head_dim < 2 or head_dim % 2:
            raise ValueError(f"head_dim must be a positive even number, got {head_dim}")
        if sum(section) != head_dim // 2:
            raise ValueError(
                f"mrope_section {section} sums to {sum(section)} but head_dim {head_dim} has {head_dim // 2} "
                f"rotary frequencies; the section must sum to head_dim/2"
            )
    return section


def frequency_axes(cfg: RopeConfig, mrope_section: Sequence[int] = (16, 24, 24)) -> torch.Tensor:
    """The axis (0 = t, 1 = h, 2 = w) of every rotary frequency n, as a LongTensor [sum(mrope_section)].

    - ``mrope`` (and ``vanilla``/``tad``, whose three rows are identical so any allocation is 1-D RoPE):
      ``mrope_section`` in order — t takes the highest frequencies.
    - ``mrope-interleaved`` (MRoPE-I, Qwen3-VL's ``apply_interleaved_mrope``): frequency n carries h when
      n ≡ 1 (mod 3) and n < 3·b, w when n ≡ 2 (mod 3) and n < 3·c, t otherwise — so every axis spans the whole
      spectrum.  On Qwen3-VL's section (24, 20, 20) that is 24 / 20 / 20 frequencies; on Qwen2-VL's (16, 24, 24)
      the rule (as Qwen3-VL states it) gives 22 / 21 / 21, since 3·24 exceeds the 64 frequencies.
    - ``videorope`` (LTA): the last ``a`` frequencies (the lowest) carry t; the first ``b + c`` alternate
      h, w starting with h.  If b != c the alternation runs while both axes have frequencies left and the
      rest go to the larger one.
    """
    n_t, n_h, n_w = _check_section(mrope_section)
    if cfg.variant == "mrope-interleaved":
        n = torch.arange(n_t + n_h + n_w)
        axes = torch.full_like(n, AXIS_T)
        axes[(n % 3 == 1) & (n < 3 * n_h)] = AXIS_H
        axes[(n % 3 == 2) & (n < 3 * n_w)] = AXIS_W
        return axes
    if cfg.variant != "videorope":
        return torch.tensor([AXIS_T] * n_t + [AXIS_H] * n_h + [AXIS_W] * n_w, dtype=torch.long)
    pairs = min(n_h, n_w)
    spatial = [AXIS_H, AXIS_W] * pairs + [AXIS_H] * (n_h - pairs) + [AXIS_W] * (n_w - pairs)
    return torch.tensor(spatial + [AXIS_T] * n_t, dtype=torch.long)


def _inv_freq(base: Union[float, torch.Tensor], head_dim: int) -> torch.Tensor:
    # Same float32 arithmetic as transformers' default RoPE init, so unscaled M-RoPE matches it bit for bit.
    device = base.device if isinstance(base, torch.Tensor) else None
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).to(torch.float32) / head_dim
    if isinstance(base, torch.Tensor):
        return 1.0 / (base.to(torch.float32).unsqueeze(-1) ** exponents)
    return 1.0 / (base**exponents)


def _ntk_base(rope_theta: float, head_dim: int, factor: float, original_context: int) -> float:
    """β_NTK = β·((L·s − 1)/(L − 1))^(d/(d−2)), the base of M-RoPE++ and YaRN-V."""
    ratio = (original_context * factor - 1) / (original_context - 1)
    return rope_theta * ratio ** (head_dim / (head_dim - 2))


def yarn_ramp_bounds(head_dim: int, rope_theta: float, original_context: int) -> tuple:
    """YaRN's (low, high) frequency indices: β_fast = 32, β_slow = 1, clamped to [0, head_dim − 1]."""

    def index(rotations: float) -> float:
        return head_dim * math.log(original_context / (rotations * 2 * math.pi)) / (2 * math.log(rope_theta))

    low = max(math.floor(index(32)), 0)
    high = min(math.ceil(index(1)), head_dim - 1)
    return low, high


def scaled_inv_freq(
    cfg: RopeConfig,
    head_dim: int = 128,
    rope_theta: float = 1e6,
    mrope_section: Sequence[int] = (16, 24, 24),
    seq_len: Optional[Union[int, torch.Tensor]] = None,
) -> torch.Tensor:
    """Inverse frequencies [head_dim/2] (float32) after ``cfg.extrapolation``.

    ``seq_len`` is the current length S (max position + 1), used by ``dynamic`` only; it may be a 0-dim
    tensor so that callers need no device sync.  The authors apply no attention temperature (mscale = 1).
    """
    section = _check_section(mrope_section, head_dim)
    method, factor, context = cfg.extrapolation, float(cfg.extrapolation_factor), cfg.original_context
    if method is None:
        return _inv_freq(rope_theta, head_dim)
    exponent = head_dim / (head_dim - 2)
    if method == "ntk":
        return _inv_freq(rope_theta * factor**exponent, head_dim)
    if method == "dynamic":
        if seq_len is None:
            raise ValueError("extrapolation 'dynamic' needs the current sequence length seq_len")
        length = torch.as_tensor(seq_len, dtype=torch.float64)
        stretch = torch.where(length > context, factor * length / context - (factor - 1), torch.ones_like(length))
        return _inv_freq(rope_theta * stretch**exponent, head_dim)
    if method == "yarn":
        low, high = yarn_ramp_bounds(head_dim, rope_theta, context)
        if low == high:
            high += 0.001  # avoid a division by zero, as transformers does
        theta = _inv_freq(rope_theta, head_dim)
        ramp = ((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
        keep = 1 - ramp  # m_n: 1 keeps θ_n (extrapolate), 0 interpolates θ_n / s
        return theta * keep + theta / factor * (1 - keep)
    # Per-axis methods: the allocation decides which frequencies carry t, h and w.
    axes = frequency_axes(cfg, section)
    theta = _inv_freq(rope_theta, head_dim)
    ntk = _inv_freq(_ntk_base(rope_theta, head_dim, factor, context), head_dim)
    if method == "yarn-v":  # spatial unscaled, temporal NTK-scaled
        return torch.where(axes == AXIS_T, ntk, theta)
    # mrope++: t unscaled, h = ½·θ/s + ½·θ_NTK, w = θ_NTK
    h_freq = 0.5 * (theta / factor) + 0.5 * ntk
    return torch.where(axes == AXIS_T, theta, torch.where(axes == AXIS_H, h_freq, ntk))
