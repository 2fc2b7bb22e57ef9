"""Turning 3-row position ids into per-channel cos/sin once per forward, and applying 1-D rotary.

``rotary_cos_sin`` gathers, for every rotary frequency n, the position row its axis selects
(``frequency_axes``) in one ``index_select``; every attention layer then applies ordinary NeoX rotary
with ``apply_rotary``: the fused Triton kernel (``fused_rotary.py``) for CUDA tensors where Triton compiles
and runs it (checked once per device), else ``apply_rotary_eager``.  ``VIDEOROPE_ROTARY=eager|fused``
overrides the choice (``fused`` on CPU works only under Triton's interpreter, ``TRITON_INTERPRET=1``: tests).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import warnings
from typing import Tuple

import torch


def rotary_cos_sin(
    position_ids: torch.Tensor,
    inv_freq: torch.Tensor,
    axes: torch.Tensor,
    dtype: torch.dtype = torch.float32,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape [B, L, 2·F] from position_ids [3, B, L], inv_freq [F] and axes [F] (0/1/2).

    Channel c carries frequency c mod F (``cat(freqs, freqs)``, NeoX layout).  Frequencies are formed in
    float32 as transformers does (position × inv_freq, one product each) and only then cast to ``dtype``.
    """
    if position_ids.dim() == 2:  # plain 1-D positions [B, L]: every axis reads the same row
        position_ids = position_ids.unsqueeze(0).expand(3, -1, -1)
    positions = position_ids.to(torch.float32).permute(1, 2, 0)  # [B, L, 3]
    freqs = positions.index_select(-1, axes) * inv_freq.to(torch.float32)  # [B, L, F]
    cos, sin = freqs.cos(), freqs.sin()  # trig on F columns, then duplicated: half the work of cat-then-cos
    cos, sin = cos.to(dtype), sin.to(dtype)
    return torch.cat((cos, cos), dim=-1), torch.cat((sin, sin), dim=-1)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary_eager(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, unsqueeze_dim: int = 1
) -> Tuple[torch.Tensor, torch.Tensor]:
    """q, k: [B, heads, L, D] (``unsqueeze_dim=1``) or [B, L, heads, D] (``unsqueeze_dim=2``); cos/sin [B, L, D]."""
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
    # addcmul fuses the second product into the sum: one temporary fewer per tensor (~20% faster on CPU)
    return torch.addcmul(q * cos, rotate_half(q), sin), torch.addcmul(k * cos, rotate_half(k), sin)


ROTARY_ENV = "VIDEOROPE_ROTARY"
ROTARY_MODES = ("auto", "eager", "fused")


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


@functools.lru_cache(maxsize=None)
def fused_rotary_works(device: torch.device) -> bool:
    """Once per device: compile and run the kernel forward and backward on a small case and compare it with the
    eager formula.  A node without a C compiler / Python headers (Triton builds its launcher), a read-only
    Triton cache or an unsupported GPU then falls back to eager with a warning instead of failing mid-step."""
    try:
        with torch.inference_mode(False), torch.enable_grad():  # the first call may come from generate()
            from .fused_rotary import fused_apply_rotary

            generator = torch.Generator().manual_seed(0)
            q, k = (torch.randn(2, heads, 3, 16, generator=generator).to(device).requires_grad_() for heads in (4, 2))
            angles = torch.rand(1, 3, 8, generator=generator).to(device) * 100
            cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
            got = fused_apply_rotary(q, k, cos, sin)
            grads = torch.autograd.grad(got[0].sum() + got[1].sum(), (q, k))
            want = apply_rotary_eager(q, k, cos, sin)
            want_grads = torch.autograd.grad(want[0].sum() + want[1].sum(), (q, k))
            for a, b in zip(got + grads, want + want_grads):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    except Exception as error:  # noqa: BLE001 -- any failure here means: do not use the kernel on this device
        warnings.warn(f"fused rotary unusable on {device} ({type(error).__name__}: {error}); using the eager path")
        return False
    return True


def rotary_mode() -> str:
    mode = os.environ.get(ROTARY_ENV, "auto")
    if mode not in ROTARY_MODES:
        raise ValueError(f"{ROTARY_ENV}={mode!r}: expected one of {', '.join(ROTARY_MODES)}")
    return mode


def uses_fused_rotary(q: torch.Tensor, cos: torch.Tensor) -> bool:
    """Whether ``apply_rotary`` takes the fused kernel for these tensors (see the module docstring)."""
    mode = rotary_mode()
    if mode == "fused":
        if not triton_available():
            raise ImportError(f"{ROTARY_ENV}=fused needs Triton (ships with torch's CUDA wheels on Linux)")
        return True
    return mode == "auto" and q.is_cuda and not cos.requires_grad and triton_available() \
        and fused_rotary_works(q.device)


def apply_rotary(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """q [B, Hq, L, D], k [B, Hk, L, D], cos/sin [B, L, D] (NeoX ``cat(c, c)``) → rotated (q, k).

    The fused kernel on CUDA when available, else the eager formula; both agree to rounding.  The kernel reads
    only the first half of cos/sin: both halves must be equal, as ``rotary_cos_sin`` builds them.
    """
    if uses_fused_rotary(q, cos):
        from .fused_rotary import fused_apply_rotary

        return fused_apply_rotary(q, k, cos, sin)
    return apply_rotary_eager(q, k, cos, sin)
