"""flash-attn 2.8.3's Python API on torch's own FlashAttention-2 kernels, with an exact torch computation elsewhere.

Why: the official flash-attn 2 wheels stop at torch 2.8, but torch itself ships FlashAttention-2
(``aten._flash_attention_forward`` / ``_flash_attention_backward``, what ``torch.nn.attention.varlen`` calls).  With
this folder on ``PYTHONPATH`` transformers finds a ``flash_attn`` package and distribution exactly as it finds the real
one, so LLaMA-Factory's ``flash_attn: fa2``, transformers' whole flash-attention integration (unpadding, packed rows,
cu_seqlens) and the hook's varlen path run unchanged; only the kernel call lands in torch.

- CUDA tensors in fp16/bf16: torch's FA2 kernels, forward and backward (``_FlashAttention``), every entry point
  reduced to the varlen form (a batch of equal-length rows is a varlen batch with constant cu_seqlens).
- Anything else (CPU; float32 when ``FLASH_ATTN_CPU_ALLOW_FP32=1``): the definition the kernels implement,
  softmax(q·kᵀ·scale [+ causal / window mask]) · v per sequence, accumulated in float32 — the test suite's
  stand-in on CPU (tests/site puts this folder on the path and lets transformers accept it without CUDA).

Conventions are the real kernel's: [tokens, heads, dim] layout, grouped-query heads, a causal mask aligned to the
bottom-right corner when seqlen_q != seqlen_k, float32 refused.  Signatures are flash-attn 2.8.3's, because
transformers inspects them to decide which keyword arguments it passes.  ``FLASH_ATTN_TORCH_KERNELS=0`` forces the
exact computation on CUDA too; ``FLASH_ATTN_CALLS_REPORT=PREFIX`` writes ``CALLS`` to ``PREFIX.<pid>.json`` at exit
(how a check proves which kernels a training process ran).
"""

from __future__ import annotations

import atexit
import functools
import json
import os

import torch

__version__ = "2.8.3"

CALLS = {"flash_attn_func": 0, "flash_attn_varlen_func": 0, "flash_attn_with_kvcache": 0,
         "torch_fa2_kernel": 0, "exact": 0}
"""How often each entry point ran, and how many attention calls went to torch's FA2 kernel or the exact path."""

LAST_VARLEN_MAX_SEQLEN: list = []
"""The ``max_seqlen_q`` arguments the varlen entry point received, newest last (tests check their type)."""

if os.environ.get("FLASH_ATTN_CALLS_REPORT"):
    def _report(prefix=os.environ["FLASH_ATTN_CALLS_REPORT"]):
        with open(f"{prefix}.{os.getpid()}.json", "w") as handle:
            json.dump(CALLS, handle)

    atexit.register(_report)


def _check_dtype(*tensors: torch.Tensor) -> None:
    if os.environ.get("FLASH_ATTN_CPU_ALLOW_FP32") == "1":
        return
    for tensor in tensors:
        if tensor.dtype not in (torch.float16, torch.bfloat16):
            raise RuntimeError("FlashAttention only support fp16 and bf16 data type")  # the real kernel's message


def _torch_kernels(query: torch.Tensor):
    """(forward, backward) of torch's FlashAttention-2 for ``query``, or None where they cannot run it."""
    if query.device.type != "cuda" or query.dtype not in (torch.float16, torch.bfloat16) \
            or os.environ.get("FLASH_ATTN_TORCH_KERNELS") == "0":
        return None
    return _aten_kernels()


@functools.cache
def _aten_kernels():
    """Looked up once: this runs in every attention layer of every step."""
    aten = torch.ops.aten
    if not (hasattr(aten, "_flash_attention_forward") and hasattr(aten, "_flash_attention_backward")):
        return None
    return aten._flash_attention_forward, aten._flash_attention_backward


@functools.lru_cache(maxsize=64)
def _uniform_cu_seqlens(batch: int, length: int, device: torch.device) -> torch.Tensor:
    """cu_seqlens of ``batch`` rows of ``length`` tokens (0, L, 2L, ...), built once per shape, not per layer."""
    return torch.arange(batch + 1, device=device, dtype=torch.int32) * length


class _FlashAttention(torch.autograd.Function):
    """Varlen attention on torch's FA2 kernels: q [Tq, H, D], k/v [Tk, Hk, D], cu_seqlens int32 [n + 1]."""

    @staticmethod
    def forward(ctx, q, k, v, cu_q, cu_k, max_q, max_k, dropout_p, scale, causal, left, right, kernels):
        forward_kernel, backward_kernel = kernels
        out, lse, seed, offset, _ = forward_kernel(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p, causal, False,
                                                   scale=scale, window_size_left=left, window_size_right=right)
        if not dropout_p:  # the RNG state is unused then; placeholders as torch.nn.attention.varlen passes them
            seed, offset = torch.zeros(2, dtype=torch.uint64, device=q.device), torch.empty(0, device=q.device)
        ctx.save_for_backward(q, k, v, out, lse, cu_q, cu_k, seed, offset)
        ctx.settings = (max_q, max_k, dropout_p, causal, scale, left, right, backward_kernel)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, out, lse, cu_q, cu_k, seed, offset = ctx.saved_tensors
        max_q, max_k, dropout_p, causal, scale, left, right, backward_kernel = ctx.settings
        dq, dk, dv = backward_kernel(grad.contiguous(), q, k, v, out, lse, cu_q, cu_k, max_q, max_k, dropout_p,
                                     causal, seed, offset, scale=scale, window_size_left=left,
                                     window_size_right=right)
        return dq, dk, dv, *([None] * 10)


def _on_kernel(kernels, q, k, v, cu_q, cu_k, max_q, max_k, dropout_p, softmax_scale, causal, window_size, softcap,
               alibi_slopes):
    if softcap or alibi_slopes is not None:
        raise NotImplementedError("torch's FlashAttention-2 kernels take neither softcap nor alibi_slopes "
                                  "(the Qwen-VL models use neither)")
    CALLS["torch_fa2_kernel"] += 1
    scale = q.shape[-1] ** -0.5 if softmax_scale is None else float(softmax_scale)
    left, right = (int(window_size[0]), 0 if causal else int(window_size[1]))
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    return _FlashAttention.apply(q, k, v, cu_q, cu_k, int(max_q), int(max_k), float(dropout_p), scale,
                                 bool(causal), left, right, kernels)


def _attend(q, k, v, softmax_scale, causal, window_size, softcap, dropout_p, alibi_slopes):
    """The exact computation for one sequence: q [Lq, H, D], k/v [Lk, Hk, D] -> [Lq, H, D] in q's dtype."""
    if alibi_slopes is not None:
        raise ValueError("flash_attn (exact path): alibi_slopes are not used by the models under test")
    CALLS["exact"] += 1
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
    kernels = _torch_kernels(q)
    if kernels is not None:  # B rows of equal length are a varlen batch with cu_seqlens 0, L, 2L, ...
        batch, length_q, length_k = q.shape[0], q.shape[1], k.shape[1]
        out = _on_kernel(kernels, q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1),
                         _uniform_cu_seqlens(batch, length_q, q.device), _uniform_cu_seqlens(batch, length_k, q.device),
                         length_q, length_k, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes)
        return out.unflatten(0, (batch, length_q))
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
        raise ValueError("flash_attn: paged KV (block_table) is not used by the models under test")
    if cu_seqlens_q.dtype != torch.int32 or cu_seqlens_k.dtype != torch.int32:
        raise RuntimeError("cu_seqlens_q must have dtype int32")  # the real kernel's requirement
    kernels = _torch_kernels(q)
    if kernels is not None:
        return _on_kernel(kernels, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p,
                          softmax_scale, causal, window_size, softcap, alibi_slopes)
    bounds_q, bounds_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()  # host reads: the exact path only
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
    """q [B, Lq, H, D] against a [B, Lcache, Hk, D] cache, after appending k/v at ``cache_seqlens`` (in place).
    Always the exact computation: transformers' generation does not call it for these models."""
    CALLS["flash_attn_with_kvcache"] += 1
    _check_dtype(q, k_cache, v_cache)
    if rotary_cos is not None or block_table is not None or cache_batch_idx is not None or cache_leftpad is not None:
        raise ValueError("flash_attn: rotary / paged / indexed caches are not used by the models under test")
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
