"""Fused rotary for GPUs: the final per-channel cos/sin applied to q and k in one Triton pass.

VideoRoPE's whole frequency allocation lives in cos/sin (gathered once per forward by ``rotary_cos_sin``),
so what every layer does is plain NeoX 1-D rotary — which Liger's M-RoPE kernel cannot express (it splits
sections itself), but a 1-D kernel fed with the gathered cos/sin can.  One program per (batch, token) reads
that token's cos/sin once and rotates every q head and every k head: q and k are read once and written once
(the memory-bandwidth floor), where the eager path (``apply_rotary_eager``) passes over them ~4 times.
Arithmetic is float32 with one rounding to the output dtype.  Backward is the same rotation by −θ.

Shapes: q [B, Hq, L, D], k [B, Hk, L, D] with any strides whose last one is 1 (the transposed views the
attention layers make); cos, sin [B or 1, L, D] in the NeoX layout ``cat(c, c)`` that ``rotary_cos_sin``
builds — only their first half is read.  Outputs keep q's and k's dtypes and strides (under autocast cos/sin
may be float32 while q and k are bf16: the result stays bf16, as flash-attention wants it).

On CUDA the kernel is compiled by Triton.  With ``TRITON_INTERPRET=1`` set before import, Triton's
interpreter runs the same kernel source on CPU tensors (slow: for tests and debugging only; the interpreter
patches ``triton.language`` for the whole process, so one process either interprets or compiles).
"""

from __future__ import annotations

import contextlib
import os
from typing import Tuple

import torch
import triton
import triton.language as tl


POINTER_ARGS = ("q_ptr", "k_ptr", "q_out_ptr", "k_out_ptr", "cos_ptr", "sin_ptr")
INTERPRETED = os.environ.get("TRITON_INTERPRET", "").lower() in ("1", "true", "yes", "on", "y")  # as Triton reads it


@triton.jit
def _rotate_heads(src, dst, src_sh, dst_sh, heads, half, cos, sin, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
    """Rotate the [heads, 2·half] rows of one token at ``src`` into ``dst`` (NeoX halves x1 | x2)."""
    h = tl.arange(0, BLOCK_H).to(tl.int64)[:, None]  # int64: head strides of [B, H, L, D] gradients are H·L·D-ish
    d = tl.arange(0, BLOCK_D)[None, :]
    ok = (h < heads) & (d < half)
    x1 = tl.load(src + h * src_sh + d, mask=ok, other=0.0).to(tl.float32)
    x2 = tl.load(src + h * src_sh + d + half, mask=ok, other=0.0).to(tl.float32)
    tl.store(dst + h * dst_sh + d, (x1 * cos - x2 * sin).to(dst.dtype.element_ty), mask=ok)
    tl.store(dst + h * dst_sh + d + half, (x2 * cos + x1 * sin).to(dst.dtype.element_ty), mask=ok)


@triton.jit
def _rotary_kernel(
    q_ptr, k_ptr, q_out_ptr, k_out_ptr, cos_ptr, sin_ptr,
    seq_len, q_heads, k_heads, half,
    q_sb, q_sh, q_sl, k_sb, k_sh, k_sl,
    qo_sb, qo_sh, qo_sl, ko_sb, ko_sh, ko_sl,
    cos_sb, cos_sl, sin_sb, sin_sl,
    BLOCK_QH: tl.constexpr, BLOCK_KH: tl.constexpr, BLOCK_D: tl.constexpr, INVERSE: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # int64 offsets: B·L·H·D passes 2^31 at long contexts
    b = row // seq_len
    t = row % seq_len
    d = tl.arange(0, BLOCK_D)
    cos = tl.load(cos_ptr + b * cos_sb + t * cos_sl + d, mask=d < half, other=0.0).to(tl.float32)[None, :]
    sin = tl.load(sin_ptr + b * sin_sb + t * sin_sl + d, mask=d < half, other=0.0).to(tl.float32)[None, :]
    if INVERSE:  # backward: rotate the gradient by −θ
        sin = -sin
    _rotate_heads(q_ptr + b * q_sb + t * q_sl, q_out_ptr + b * qo_sb + t * qo_sl, q_sh, qo_sh, q_heads, half,
                  cos, sin, BLOCK_QH, BLOCK_D)
    _rotate_heads(k_ptr + b * k_sb + t * k_sl, k_out_ptr + b * ko_sb + t * ko_sl, k_sh, ko_sh, k_heads, half,
                  cos, sin, BLOCK_KH, BLOCK_D)


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _rotate(q, k, cos, sin, inverse: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    q, k = _last_dim_contiguous(q), _last_dim_contiguous(k)
    cos, sin = _last_dim_contiguous(cos), _last_dim_contiguous(sin)
    batch, q_heads, seq_len, dim = q.shape
    k_heads = k.shape[1]
    q_out, k_out = torch.empty_like(q), torch.empty_like(k)  # same strides as the inputs (dense layouts)
    if batch * seq_len == 0:
        return q_out, k_out

    def batch_stride(table):  # one cos/sin row shared by the batch
        return table.stride(0) if table.shape[0] > 1 else 0

    # Triton launches on the *current* CUDA device: make it q's (layers spread over GPUs, device_map="auto")
    with torch.cuda.device(q.device) if q.is_cuda else contextlib.nullcontext():
        _rotary_kernel[(batch * seq_len,)](
            q, k, q_out, k_out, cos, sin,
            seq_len, q_heads, k_heads, dim // 2,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            q_out.stride(0), q_out.stride(1), q_out.stride(2), k_out.stride(0), k_out.stride(1), k_out.stride(2),
            batch_stride(cos), cos.stride(1), batch_stride(sin), sin.stride(1),
            BLOCK_QH=triton.next_power_of_2(max(q_heads, 1)), BLOCK_KH=triton.next_power_of_2(max(k_heads, 1)),
            BLOCK_D=triton.next_power_of_2(dim // 2), INVERSE=inverse,
        )
    return q_out, k_out


class _FusedRotary(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, cos, sin):
        ctx.save_for_backward(cos, sin)
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None instead of rotated zeros
        return _rotate(q, k, cos, sin, inverse=False)

    @staticmethod
    def backward(ctx, grad_q, grad_k):
        cos, sin = ctx.saved_tensors
        if grad_q is None or grad_k is None:  # one output unused: rotate the other alone (zero heads of the first)
            present = grad_q if grad_q is not None else grad_k
            if present is None:
                return None, None, None, None
            rotated = _rotate(present, present[:, :0], cos, sin, inverse=True)[0]
            return (rotated, None, None, None) if grad_q is not None else (None, rotated, None, None)
        grad_q, grad_k = _rotate(grad_q, grad_k, cos, sin, inverse=True)
        return grad_q, grad_k, None, None


def fused_apply_rotary(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """q [B, Hq, L, D], k [B, Hk, L, D], cos/sin [B or 1, L, D] (NeoX ``cat(c, c)``) → rotated (q, k).

    Differentiable in q and k (cos/sin are position tables, never trained).
    """
    if q.dim() != 4 or k.dim() != 4 or cos.dim() != 3 or sin.shape != cos.shape:
        raise ValueError(
            f"fused rotary expects q [B, Hq, L, D], k [B, Hk, L, D], cos/sin [B, L, D]; got q {tuple(q.shape)}, "
            f"k {tuple(k.shape)}, cos {tuple(cos.shape)}, sin {tuple(sin.shape)}"
        )
    batch, _, seq_len, dim = q.shape
    if (k.shape[0], k.shape[2], k.shape[3]) != (batch, seq_len, dim) or cos.shape[1:] != (seq_len, dim) \
            or cos.shape[0] not in (1, batch) or dim % 2:
        raise ValueError(
            f"fused rotary: mismatched shapes q {tuple(q.shape)}, k {tuple(k.shape)}, cos {tuple(cos.shape)} "
            "(same B, L and an even D expected)"
        )
    if cos.requires_grad or sin.requires_grad:
        raise ValueError("fused rotary does not differentiate cos/sin; use apply_rotary_eager")
    if not q.is_cuda and not INTERPRETED:
        raise ValueError(
            f"fused rotary runs on CUDA tensors (got {q.device}); on CPU only under Triton's interpreter "
            "(TRITON_INTERPRET=1 set before import, for tests)"
        )
    return _FusedRotary.apply(q, k, cos, sin)
