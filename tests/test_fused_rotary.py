"""The fused Triton rotary kernel against the eager formula (Liger-style: random inputs, many shapes and dtypes).

Every comparison runs twice: compiled on CUDA (skipped, with the reason, where no GPU is present) and on CPU
through Triton's interpreter (the same kernel source, executed op by op).  The interpreter patches
``triton.language`` for its whole process, so ``test_kernel_interpreted_on_cpu`` re-runs this file's
``cpu-interpreted`` cases in a child process with ``TRITON_INTERPRET=1``.  Then the hooked model with the fused
path forced equals the eager one (loss and gradients), the automatic choice is checked, and Triton compiles
the kernel for A100/H100 ahead of time, here, without a GPU.
"""

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from conftest import load_hooked, make_inputs

from videorope_train.rope import ROTARY_ENV, apply_rotary, apply_rotary_eager, rotary_mode, uses_fused_rotary
from videorope_train.rope.rotary import fused_rotary_works

pytest.importorskip("triton", reason="Triton ships with torch's Linux wheels; the fused kernel needs it")
from videorope_train.rope.fused_rotary import INTERPRETED, fused_apply_rotary  # noqa: E402

NO_GPU = "no CUDA device here: the compiled Triton kernel runs only on a GPU (CPU runs it interpreted)"
DEVICES = [
    pytest.param("cpu", id="cpu-interpreted", marks=pytest.mark.skipif(
        not INTERPRETED, reason="runs in the TRITON_INTERPRET=1 child process of test_kernel_interpreted_on_cpu")),
    pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(
        INTERPRETED or not torch.cuda.is_available(), reason=NO_GPU)),
]
COMPILED_ONLY = pytest.mark.skipif(INTERPRETED, reason="compiles the kernel: not in the interpreted process")
# (batch, q heads, kv heads, tokens, head_dim): Qwen2-VL-7B (28/4, 128), -2B (12/2), MHA with a
# non-power-of-two half (80 -> 40 lanes of 64), a one-token decode step, a tiny model's head
SHAPES = [(1, 28, 4, 9, 128), (2, 12, 2, 5, 128), (2, 5, 5, 3, 80), (3, 4, 2, 1, 16), (2, 8, 1, 17, 64)]
# fp32: products of floats rounded once either way; bf16/fp16: the kernel rounds once, eager up to three times
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}


def random_case(shape, dtype, device, layout, shared_cos, seed=0):
    generator = torch.Generator().manual_seed(seed)
    batch, q_heads, k_heads, length, dim = shape

    def states(heads):
        if layout == "attention":  # what the attention layers pass: [B, L, H, D] viewed as [B, H, L, D]
            return torch.randn(batch, length, heads, dim, generator=generator).transpose(1, 2)
        return torch.randn(batch, heads, length, dim, generator=generator)

    angles = torch.rand(1 if shared_cos else batch, length, dim // 2, generator=generator) * 200
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    q, k = states(q_heads), states(k_heads)
    return [t.to(device=device, dtype=dtype) for t in (q, k, cos, sin)]


def exact(x, cos, sin):
    """The rotation in float64 from the (already rounded) inputs: what a once-rounded result must match."""
    x, c, s = x.double(), cos.double().unsqueeze(1), sin.double().unsqueeze(1)
    half = x.shape[-1] // 2
    return x * c + torch.cat((-x[..., half:], x[..., :half]), -1) * s


UNIT_ROUNDOFF = {torch.float32: 2.0 ** -24, torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}


def rounding_units(device, dtype):
    """Units of roundoff the final cast may cost: compiled Triton (and torch) round to nearest; Triton 3.4's
    interpreter truncates float32 -> bf16 (round toward zero: up to one whole ulp) -- an interpreter artefact."""
    return 2 if device == "cpu" and dtype == torch.bfloat16 else 1


def assert_rounded_once(got, x, cos, sin, device):
    """got == the exact rotation of x, rounded once: float32 arithmetic, then one cast to x's dtype."""
    want = exact(x, cos, sin)
    half = x.shape[-1] // 2
    pair = x.double().abs()
    pair = torch.cat([pair[..., :half] + pair[..., half:]] * 2, -1)  # |x1| + |x2| of each rotated pair
    bound = rounding_units(device, x.dtype) * UNIT_ROUNDOFF[x.dtype] * want.abs() + 4 * 2.0 ** -24 * pair
    assert ((got.double() - want).abs() <= bound).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("layout, shared_cos", [("attention", False), ("contiguous", True)])
def test_fused_forward_matches_eager(device, dtype, shape, layout, shared_cos):
    q, k, cos, sin = random_case(shape, dtype, device, layout, shared_cos)
    got_q, got_k = fused_apply_rotary(q, k, cos, sin)
    want_q, want_k = apply_rotary_eager(q, k, cos, sin)
    tol = TOLERANCE[dtype]
    for got, want, x in ((got_q, want_q, q), (got_k, want_k, k)):
        assert got.dtype == dtype and got.shape == x.shape
        assert got.stride() == x.stride(), "the output keeps the input's layout (no copy before attention)"
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)
        assert_rounded_once(got, x, cos, sin, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", SHAPES[:3], ids=str)
@pytest.mark.parametrize("gradient", ["attention", "contiguous", "q only"])
def test_fused_backward_matches_eager(device, dtype, shape, gradient):
    """Gradients arrive in the attention's layout, contiguous [B, H, L, D] (eager attention), or for q only."""
    q, k, cos, sin = random_case(shape, dtype, device, "attention", shared_cos=False, seed=1)
    layout = "attention" if gradient == "attention" else "contiguous"
    upstream = random_case(shape, dtype, device, layout, shared_cos=False, seed=2)[:2]
    grads = []
    for rotate in (fused_apply_rotary, apply_rotary_eager):
        leaf_q, leaf_k = q.detach().requires_grad_(), k.detach().requires_grad_()
        out_q, out_k = rotate(leaf_q, leaf_k, cos, sin)
        loss = (out_q.float() * upstream[0].float()).sum()
        if gradient != "q only":
            loss = loss + (out_k.float() * upstream[1].float()).sum()
        loss.backward()
        grads.append((leaf_q.grad, leaf_k.grad))
    tol = TOLERANCE[dtype]
    for got, want in zip(*grads):
        if want is None:  # k took no part in the loss: no gradient at all, not rotated zeros
            assert got is None
            continue
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    # rotation is orthogonal: the gradient of <R q, g> is R^T g, i.e. rotating g by -theta
    back_q = exact(upstream[0], cos, -sin)
    torch.testing.assert_close(grads[0][0].double(), back_q, rtol=tol, atol=tol)


@pytest.mark.parametrize("device", DEVICES)
def test_fused_sin_with_its_own_strides(device):
    """cos and sin are read each with its own strides (here sin is stored transposed, same values)."""
    q, k, cos, sin = random_case(SHAPES[2], torch.float32, device, "attention", shared_cos=False)
    sin_other_layout = sin.transpose(0, 1).contiguous().transpose(0, 1)
    assert sin_other_layout.stride() != cos.stride()
    for got, want in zip(fused_apply_rotary(q, k, cos, sin_other_layout), apply_rotary_eager(q, k, cos, sin)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_fused_mixed_precision_and_empty(device):
    """Under autocast q/k are bf16 while cos/sin are float32: the result is the float32 rotation rounded to bf16.
    A zero-length sequence passes through."""
    q, k, cos, sin = random_case(SHAPES[1], torch.float32, device, "attention", shared_cos=False)
    got_q, got_k = fused_apply_rotary(q.bfloat16(), k.bfloat16(), cos, sin)
    want_q, want_k = apply_rotary_eager(q.bfloat16().float(), k.bfloat16().float(), cos, sin)
    assert got_q.dtype == got_k.dtype == torch.bfloat16
    for got, want in ((got_q, want_q), (got_k, want_k)):
        # within one bf16 ulp of torch's rounding of the float32 rotation (fma order and the interpreter's
        # truncation may move a result across a rounding boundary; no more)
        torch.testing.assert_close(got.float(), want.bfloat16().float(), rtol=2.0 ** -7, atol=0)
    empty_q, empty_k = fused_apply_rotary(q[:, :, :0], k[:, :, :0], cos[:, :0], sin[:, :0])
    assert empty_q.shape == (2, 12, 0, 128) and empty_k.shape == (2, 2, 0, 128)


def test_fused_rejects_bad_shapes():
    q, k, cos, sin = random_case((2, 4, 2, 3, 16), torch.float32, "cpu", "contiguous", shared_cos=False)
    with pytest.raises(ValueError, match="mismatched shapes"):
        fused_apply_rotary(q, k[:, :, :2], cos, sin)
    with pytest.raises(ValueError, match=r"expects q \[B, Hq, L, D\]"):
        fused_apply_rotary(q[0], k, cos, sin)
    with pytest.raises(ValueError, match="does not differentiate cos/sin"):
        fused_apply_rotary(q, k, cos.requires_grad_(), sin)


def test_probe_decides_per_device():
    """auto mode compiles and checks the kernel once per device; a device where it cannot run falls back, warned."""
    fused_rotary_works.cache_clear()
    if INTERPRETED:
        assert fused_rotary_works(torch.device("cpu"))
    else:  # compiled Triton cannot take CPU tensors: the probe says so instead of failing a training step
        with pytest.warns(UserWarning, match=r"fused rotary unusable on cpu \(ValueError: fused rotary runs on CUDA"):
            assert not fused_rotary_works(torch.device("cpu"))
    fused_rotary_works.cache_clear()
    with torch.inference_mode(), warnings.catch_warnings(record=True):  # generate()'s first call probes alike
        assert fused_rotary_works(torch.device("cpu")) == INTERPRETED


def test_automatic_choice(monkeypatch):
    q = torch.zeros(1, 2, 3, 8)
    cos = torch.zeros(1, 3, 8)
    monkeypatch.delenv(ROTARY_ENV, raising=False)
    assert rotary_mode() == "auto" and not uses_fused_rotary(q, cos)  # CPU: eager
    if not INTERPRETED:
        with pytest.raises(ValueError, match="on CPU only under Triton's interpreter"):
            fused_apply_rotary(q, q, cos, cos)
    monkeypatch.setenv(ROTARY_ENV, "fused")
    assert uses_fused_rotary(q, cos)
    monkeypatch.setenv(ROTARY_ENV, "eager")
    assert not uses_fused_rotary(q, cos)
    monkeypatch.setenv(ROTARY_ENV, "triton")
    with pytest.raises(ValueError, match="VIDEOROPE_ROTARY='triton': expected one of auto, eager, fused"):
        apply_rotary(q, q, cos, cos)


@pytest.mark.skipif(INTERPRETED or not torch.cuda.is_available(), reason=NO_GPU)
def test_automatic_choice_on_gpu(monkeypatch):
    monkeypatch.delenv(ROTARY_ENV, raising=False)
    q, k, cos, sin = random_case(SHAPES[0], torch.bfloat16, "cuda", "attention", shared_cos=False)
    assert uses_fused_rotary(q, cos)
    for got, want in zip(apply_rotary(q, k, cos, sin), apply_rotary_eager(q, k, cos, sin)):
        torch.testing.assert_close(got, want, rtol=TOLERANCE[torch.bfloat16], atol=TOLERANCE[torch.bfloat16])
    monkeypatch.setenv(ROTARY_ENV, "eager")
    assert not uses_fused_rotary(q, cos)


@pytest.mark.skipif(INTERPRETED or torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_fused_on_second_gpu():
    """Layers spread over GPUs (device_map="auto"): the kernel runs on its tensors' device, not the current one."""
    torch.cuda.set_device(0)
    q, k, cos, sin = random_case(SHAPES[0], torch.bfloat16, "cuda:1", "attention", shared_cos=False)
    for got, want in zip(fused_apply_rotary(q, k, cos, sin), apply_rotary_eager(q, k, cos, sin)):
        assert got.device == q.device
        torch.testing.assert_close(got, want, rtol=TOLERANCE[torch.bfloat16], atol=TOLERANCE[torch.bfloat16])


@pytest.mark.parametrize("device", DEVICES)
def test_hooked_model_fused_equals_eager(hooked_dir, monkeypatch, device):
    """The whole hooked model (VideoRoPE, a video + text batch) trains the same through either rotary path."""
    path = hooked_dir("videorope")
    inputs = make_inputs(path, [("video", "What happens in the video?"), ("text", "Hi")])
    inputs = {key: value.to(device) for key, value in inputs.items()}
    results = {}
    for mode in ("fused", "eager"):
        monkeypatch.setenv(ROTARY_ENV, mode)
        torch.manual_seed(0)
        model = load_hooked(path).to(device).train()
        labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
        loss = model(**inputs, labels=labels).loss
        loss.backward()
        layer = model.model.language_model.layers[0].self_attn
        results[mode] = (loss.detach(), layer.q_proj.weight.grad.clone(), layer.k_proj.weight.grad.clone())
    for got, want in zip(results["fused"], results["eager"]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@COMPILED_ONLY
def test_kernel_interpreted_on_cpu():
    """This file's cpu-interpreted cases, in a child process where Triton interprets (see the module docstring)."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cpu-interpreted or choice or probe",
         __file__],
        cwd=Path(__file__).resolve().parents[1], env=dict(os.environ, TRITON_INTERPRET="1"),
        capture_output=True, text=True, timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    passed = int(re.search(r"(\d+) passed", result.stdout).group(1))
    # forward, backward, sin strides, mixed precision, hooked model, probe, choice
    expected = 2 * len(SHAPES) * 3 + 3 * 2 * 3 + 1 + 1 + 1 + 1 + 1
    assert passed == expected, result.stdout[-3000:]


def compile_kernel(arch, pointer, inverse, blocks=(32, 4, 64), integers="i32", decode=False):
    """Lower the kernel to a cubin for ``sm_{arch}`` without a GPU; blocks = (BLOCK_QH, BLOCK_KH, BLOCK_D)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from videorope_train.rope.fused_rotary import POINTER_ARGS
    from videorope_train.rope.fused_rotary import _rotary_kernel as kernel

    constexprs = dict(zip(("BLOCK_QH", "BLOCK_KH", "BLOCK_D"), blocks), INVERSE=inverse)
    if decode:  # Triton specialises an int argument equal to 1 into a constant: the one-token decode step
        constexprs["seq_len"] = 1
    signature = {
        name: f"*{pointer}" if name in POINTER_ARGS else "constexpr" if name in constexprs else integers
        for name in kernel.arg_names
    }
    source = ASTSource(fn=kernel, signature=signature,
                       constexprs={(kernel.arg_names.index(k),): v for k, v in constexprs.items()})
    return triton.compile(source, target=GPUTarget("cuda", arch, 32))


@COMPILED_ONLY
@pytest.mark.parametrize("arch", [80, 90], ids=["sm80-A100", "sm90-H100"])
@pytest.mark.parametrize("pointer", ["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("inverse", [False, True], ids=["forward", "backward"])
def test_kernel_compiles_for_gpus(arch, pointer, inverse):
    """Triton lowers the kernel to a cubin for A100/H100 here, without a GPU (ahead-of-time compilation):
    the compiled path type-checks and lowers, not only the interpreted one."""
    compiled = compile_kernel(arch, pointer, inverse)
    assert compiled.asm["cubin"] and f".target sm_{arch}" in compiled.asm["ptx"]
    # every address product is 64-bit: offsets pass 2^31 at long contexts (e.g. [B, H, L, D] gradients)
    products = re.findall(r"arith\.muli .*: (\S+)", compiled.asm["ttir"])
    assert products and all(kind.endswith("i64>") or kind == "i64" for kind in products), products


@COMPILED_ONLY
@pytest.mark.parametrize("blocks, integers, decode", [
    ((16, 1, 64), "i64", False),  # one KV head; 64-bit strides (Triton passes ints >= 2^31 as i64)
    ((32, 4, 64), "i32", True),   # decode: seq_len specialised to 1
    ((8, 8, 64), "i32", False),   # MHA with a non-power-of-two half padded to 64 lanes (head_dim 80)
])
def test_kernel_compiles_for_specialisations(blocks, integers, decode):
    compiled = compile_kernel(90, "bf16", False, blocks, integers, decode)
    assert compiled.asm["cubin"]
