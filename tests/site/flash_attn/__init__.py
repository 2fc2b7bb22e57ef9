"""Test stand-in for the flash-attn 2.8.3 package: its Python API, computed exactly with torch on any device.

transformers finds it as it finds the real package (``find_spec("flash_attn")`` and the ``flash_attn`` distribution's
metadata beside it), so its whole flash-attention integration runs unchanged on CPU: unpadding, packed-sequence
detection, cu_seqlens, kwargs processing.  Only the CUDA kernels are replaced, by the definition they implement:
softmax(q·kᵀ·scale [+ causal / window mask]) · v per sequence, accumulated in float32, with the real kernel's
conventions (bottom-right aligned causal mask when seqlen_q != seqlen_k, grouped-query heads, [tokens, heads, dim]).

Like the real kernel it refuses float32 inputs; tests comparing a float32 model exactly with sdpa set
``FLASH_ATTN_CPU_ALLOW_FP32=1``.  Signatures are those of flash-attn 2.8.3, because transformers inspects them to
decide which keyword arguments it passes.
"""

from __future__ import annotations

import os

import torch

__version__ = "2.8.3"

CALLS = {"flash_attn_func": 0, "flash_attn_varlen_func": 0, "flash_attn_with_kvcache": 0}
"""How often each entry point ran (tests read it to prove the flash path was taken)."""

LAST_VARLEN_MAX_SEQLEN: list = []
"""The ``max_seqlen_q`` arguments the varlen entry point received, newest last (tests check their type)."""


def _check_dtype(*tensors: torch.Tensor) -> None:
    if os.environ.get("FLASH_ATTN_CPU_ALLOW_FP32") == "1":
        return
    for tensor in tensors:
        if tensor.dtype not in (torch.float16, torch.bfloat16):
            raise RuntimeError("FlashAttention only support fp16 and bf16 data type")  # the real kernel's message


def _attend(q, k, v, softmax_scale, causal, window_size, softcap, dropout_p, alibi_slopes):
    """One sequence: q [Lq, H, D], k/v [Lk, Hk, D] -> [Lq, H, D] in q's dtype."""
    if alibi_slopes is not None:
        raise ValueError("flash_attn_cpu: alibi_slopes are not used by the models under test")
    length_q, heads, dim = q.shape
    length_k, kv_heads = k.shape[0], k.shape[1]
    if heads % kv_heads:
        raise RuntimeError("Number of heads in key/value must divide number of heads in query")
    scale = dim ** -0.5 if softmax_scale is None else softmax_scale
    k = k.repeat_interleave(heads // kv_heads, dim=1)
    v = v.repeat_interleave(heads // kv_heads, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q.float(), k.float()) * scale
    if softcap:
        scores = softcap * torch.tanh(scores / softcap)
    # flash-attn >= 2.1 aligns the causal mask to the bottom-right corner: query i sees key j <= i + Lk - Lq
    offset = length_k - length_q
    rows = torch.arange(length_q, device=q.device).view(-1, 1) + offset
    cols = torch.arange(length_k, device=q.device).view(1, -1)
    left, right = window_size
    allowed = torch.ones(length_q, length_k, dtype=torch.bool, device=q.device)
    if causal:
        right = 0
    if right >= 0:
        allowed &= cols <= rows + right
    if left >= 0:
        allowed &= cols >= rows - left
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # a query that sees no key gives 0, as the kernel does
    if dropout_p:
        probs = torch.nn.functional.dropout(probs, p=dropout_p)
    return torch.einsum("hqk,khd->qhd", probs, v.float()).to(q.dtype)


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                    alibi_slopes=None, deterministic=False, return_attn_probs=False):
    """q [B, Lq, H, D], k/v [B, Lk, Hk, D] -> [B, Lq, H, D]."""
    CALLS["flash_attn_func"] += 1
    _check_dtype(q, k, v)
    out = [_attend(q[b], k[b], v[b], softmax_scale, causal, window_size, softcap, dropout_p, alibi_slopes)
           for b in range(q.shape[0])]
    return torch.stack(out)


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                           softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                           deterministic=False, return_attn_probs=False, block_table=None):
    """q [total_q, H, D], k/v [total_k, Hk, D], cu_seqlens [n + 1] int32 -> [total_q, H, D]."""
    CALLS["flash_attn_varlen_func"] += 1
    LAST_VARLEN_MAX_SEQLEN.append(max_seqlen_q)
    del LAST_VARLEN_MAX_SEQLEN[:-64]
    _check_dtype(q, k, v)
    if block_table is not None:
        raise ValueError("flash_attn_cpu: paged KV (block_table) is not used by the models under test")
    if cu_seqlens_q.dtype != torch.int32 or cu_seqlens_k.dtype != torch.int32:
        raise RuntimeError("cu_seqlens_q must have dtype int32")  # the real kernel's requirement
    bounds_q, bounds_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()  # host reads: fine for a test kernel
    lengths_q = [b - a for a, b in zip(bounds_q, bounds_q[1:])]
    if max(lengths_q, default=0) > int(max_seqlen_q):
        raise RuntimeError(f"max_seqlen_q={max_seqlen_q} is below the longest sequence {max(lengths_q)}")
    out = q.new_zeros(q.shape)
    for (q0, q1), (k0, k1) in zip(zip(bounds_q, bounds_q[1:]), zip(bounds_k, bounds_k[1:])):
        if q1 > q0:
            out[q0:q1] = _attend(q[q0:q1], k[k0:k1], v[k0:k1], softmax_scale, causal, window_size, softcap,
                                 dropout_p, alibi_slopes)
    return out


def flash_attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, rotary_cos=None, rotary_sin=None,
                            cache_seqlens=None, cache_batch_idx=None, cache_leftpad=None, block_table=None,
                            softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                            rotary_interleaved=True, alibi_slopes=None, num_splits=0, return_softmax_lse=False):
    """q [B, Lq, H, D] against a [B, Lcache, Hk, D] cache, after appending k/v at ``cache_seqlens`` (in place)."""
    CALLS["flash_attn_with_kvcache"] += 1
    _check_dtype(q, k_cache, v_cache)
    if rotary_cos is not None or block_table is not None or cache_batch_idx is not None or cache_leftpad is not None:
        raise ValueError("flash_attn_cpu: rotary / paged / indexed caches are not used by the models under test")
    batch = q.shape[0]
    if cache_seqlens is None:
        lengths = [k_cache.shape[1]] * batch
    elif isinstance(cache_seqlens, int):
        lengths = [cache_seqlens] * batch
    else:
        lengths = cache_seqlens.tolist()
    out = []
    for b in range(batch):
        end = lengths[b]
        if k is not None:
            new = k.shape[1]
            k_cache[b, end:end + new], v_cache[b, end:end + new] = k[b], v[b]
            end += new
        out.append(_attend(q[b], k_cache[b, :end], v_cache[b, :end], softmax_scale, causal, window_size, softcap,
                           0.0, alibi_slopes))
    return torch.stack(out)
