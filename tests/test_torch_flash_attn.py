"""tools/torch_flash_attn (flash-attn 2.8.3's API on torch's FA2 kernels) against exact attention in float64.

On a CUDA machine the kernel path runs torch's real FlashAttention-2 (``aten._flash_attention_forward/backward``);
on CPU those two ops are replaced by exact torch definitions of what they compute, found where the package finds
the real ones (``_torch_kernels``), so the package's own code — varlen reduction of batched calls, cu_seqlens,
window and causal conventions, grouped-query heads, the autograd function — runs unchanged.  The exact path (the
CPU stand-in the rest of the suite uses) is held to the same reference.

The reference is a dense float64 softmax over all packed tokens with a block-diagonal mask (another formulation
than the package's per-sequence loop).  Tolerance: inputs are bf16 values, so the reference sees the same numbers;
the only error is the kernel's — bf16 rounding of the output (relative 2^-8 ≈ 0.004 on values |o| ≤ ~2) and, on
GPU, P rounded to bf16 before P·V (another 2^-8 relative per term, averaging out) — hence atol = rtol = 1.6e-2
(4 ulps at 1.0).  Gradients sum over up to 8 keys of such terms: 3e-2.
"""

import sys

import pytest
import torch
from conftest import FLASH_ATTN_DIR

if FLASH_ATTN_DIR not in sys.path:
    sys.path.insert(0, FLASH_ATTN_DIR)
import flash_attn  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
OUT = {"rtol": 1.6e-2, "atol": 1.6e-2}
GRAD = {"rtol": 3e-2, "atol": 3e-2}


def reference(q, k, v, cu_q, cu_k, causal, window, scale):
    """Dense float64 attention over packed tokens: query i of sequence s sees key j of s when (bottom-right causal)
    j - start_k(s) <= i - start_q(s) + (Lk(s) - Lq(s)) + right and >= ... - left (-1: unbounded)."""
    lengths_q, lengths_k = cu_q.diff().long(), cu_k.diff().long()
    sequences = torch.arange(len(lengths_q), device=q.device)
    seq_q, seq_k = sequences.repeat_interleave(lengths_q), sequences.repeat_interleave(lengths_k)
    pos_q = torch.arange(q.shape[0], device=q.device) - cu_q.long()[seq_q] + (lengths_k - lengths_q)[seq_q]
    pos_k = torch.arange(k.shape[0], device=q.device) - cu_k.long()[seq_k]
    allowed = seq_q[:, None] == seq_k[None, :]
    left, right = window[0], 0 if causal else window[1]
    if right >= 0:
        allowed &= pos_k[None, :] <= pos_q[:, None] + right
    if left >= 0:
        allowed &= pos_k[None, :] >= pos_q[:, None] - left
    groups = q.shape[1] // k.shape[1]
    k, v = (x.double().repeat_interleave(groups, dim=1) for x in (k, v))
    scores = torch.einsum("qhd,khd->hqk", q.double(), k) * scale
    probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1).nan_to_num(0.0)
    return torch.einsum("hqk,khd->qhd", probs, v)


def exact_forward(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p, causal, debug, *, scale, window_size_left,
                  window_size_right):
    """What aten._flash_attention_forward computes (varlen form), exactly."""
    assert q.dim() == 3 and cu_q.dtype == cu_k.dtype == torch.int32 and isinstance(max_q, int) and dropout_p == 0
    assert int(cu_q.diff().max()) <= max_q and int(cu_k.diff().max()) <= max_k
    out = reference(q, k, v, cu_q, cu_k, causal, (window_size_left, window_size_right), scale).to(q.dtype)
    empty = torch.empty(0)
    return out, torch.zeros(q.shape[1], q.shape[0]), empty, empty, empty


def exact_backward(grad, q, k, v, out, lse, cu_q, cu_k, max_q, max_k, dropout_p, causal, seed, offset, *, scale,
                   window_size_left, window_size_right):
    with torch.enable_grad():
        inputs = [x.detach().double().requires_grad_() for x in (q, k, v)]
        result = reference(*inputs, cu_q, cu_k, causal, (window_size_left, window_size_right), scale)
        grads = torch.autograd.grad(result, inputs, grad.double())
    return tuple(g.to(x.dtype) for g, x in zip(grads, (q, k, v)))


@pytest.fixture(params=["kernel", "exact"])
def path(request, monkeypatch):
    """kernel: torch's FA2 kernels (CUDA) or their exact CPU definitions; exact: the package's exact computation."""
    if request.param == "exact":
        monkeypatch.setenv("FLASH_ATTN_TORCH_KERNELS", "0")
    elif DEVICE == "cpu":
        monkeypatch.setattr(flash_attn, "_torch_kernels", lambda q: (exact_forward, exact_backward))
    return request.param


def tensors(shape, seed):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=generator) * 0.5).to(DEVICE, torch.bfloat16).requires_grad_()


def check(path, calls_before, out, want, inputs, reference_inputs):
    torch.testing.assert_close(out.double(), want, **OUT)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(9)).to(DEVICE)
    got = torch.autograd.grad(out, inputs, grad.to(out.dtype))
    expected = torch.autograd.grad(want, reference_inputs, grad.double())
    for name, g, e in zip("qkv", got, expected):
        torch.testing.assert_close(g.double(), e, **GRAD, msg=lambda m: f"d{name}: {m}")
    ran = flash_attn.CALLS["torch_fa2_kernel"] - calls_before["torch_fa2_kernel"]
    assert ran == (1 if path == "kernel" else 0)


@pytest.mark.parametrize("causal, window", [(True, (-1, -1)), (False, (-1, -1)), (True, (2, -1)), (False, (1, 1))])
def test_varlen_grouped_query_heads(path, causal, window):
    """Three packed sequences (5, 1, 7 tokens), 4 query heads on 2 key/value heads, head dim 64."""
    cu = torch.tensor([0, 5, 6, 13], dtype=torch.int32, device=DEVICE)
    q, k, v = tensors((13, 4, 64), 0), tensors((13, 2, 64), 1), tensors((13, 2, 64), 2)
    before = dict(flash_attn.CALLS)
    out = flash_attn.flash_attn_varlen_func(q, k, v, cu, cu, 7, 7, causal=causal, window_size=window)
    leaves = [x.detach().double().requires_grad_() for x in (q, k, v)]
    want = reference(*leaves, cu, cu, causal, window, 64 ** -0.5)
    check(path, before, out, want, (q, k, v), leaves)


@pytest.mark.parametrize("length_q", [1, 3, 6])
def test_batched_rows_and_bottom_right_causal_alignment(path, length_q):
    """flash_attn_func on [B, L, H, D]; with fewer queries than keys (decoding against a cache) the causal mask is
    aligned to the bottom-right corner: the last query sees every key.  Scale given explicitly."""
    batch, length_k = 2, 6
    q, k, v = tensors((batch, length_q, 2, 32), 3), tensors((batch, length_k, 1, 32), 4), tensors((batch, 6, 1, 32), 5)
    before = dict(flash_attn.CALLS)
    out = flash_attn.flash_attn_func(q, k, v, softmax_scale=0.3, causal=True)
    leaves = [x.detach().double().requires_grad_() for x in (q, k, v)]
    rows = torch.arange(batch + 1, dtype=torch.int32, device=DEVICE)
    flat = [x.flatten(0, 1) for x in leaves]
    want = reference(*flat, rows * length_q, rows * length_k, True, (-1, -1), 0.3).unflatten(0, (batch, length_q))
    check(path, before, out, want, (q, k, v), leaves)


def test_float32_is_refused_like_the_real_kernel(monkeypatch):
    monkeypatch.delenv("FLASH_ATTN_CPU_ALLOW_FP32", raising=False)
    q = torch.zeros(1, 2, 1, 8, device=DEVICE)
    with pytest.raises(RuntimeError, match="only support fp16 and bf16"):
        flash_attn.flash_attn_func(q, q, q)


def test_the_kernel_path_is_taken_exactly_on_cuda_in_half_precision():
    half = torch.zeros(2, 1, 8, dtype=torch.bfloat16)
    assert flash_attn._torch_kernels(half) is None  # CPU: the exact path
    assert flash_attn._torch_kernels(half.float()) is None
    if torch.cuda.is_available():  # torch >= 2.5 ships the kernels; a CUDA machine without them fails here
        assert flash_attn._torch_kernels(half.cuda()) is not None
