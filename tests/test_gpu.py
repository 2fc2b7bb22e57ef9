"""CUDA checks with real flash-attention 2 kernels (scripts/device_check.sh, gpu_check.sh; skipped without a GPU).

The CPU suite proves the same paths with the flash_attn package's exact computation (test_flash_attention.py);
here the real kernels (flash-attn, or torch's own FA2 through tools/torch_flash_attn), bf16, and the fused rotary
kernel that the hook picks on CUDA.  ``VIDEOROPE_GPU_TESTS_DEVICE=cpu`` runs them on CPU instead (the exact
attention, the eager rotary): how ``device_check.sh --smoke`` keeps this file's code exercised between GPU draws.
"""

import importlib.util
import os

import pytest
import torch
from conftest import FAMILIES, make_inputs, run_in_fresh_process, stand_in_loaded
from test_flash_attention import packed_row
from test_hook import MIXED, visual_kwargs

from videorope_train.rope import VARIANTS, uses_fused_rotary

DEVICE = os.environ.get("VIDEOROPE_GPU_TESTS_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(
    (DEVICE == "cuda" and not torch.cuda.is_available()) or importlib.util.find_spec("flash_attn") is None,
    reason="needs a CUDA device and flash-attn (scripts/device_check.sh, scripts/gpu_check.sh)",
)
BF16 = {"rtol": 3e-2, "atol": 3e-2}


def ran_in_a_fresh_process(request) -> bool:
    """In a whole-suite run the stand-in is already loaded here (test_flash_attention.py): run this test in a child
    process with the real kernels instead, and require that it passed there."""
    if DEVICE != "cuda" or not stand_in_loaded():
        return False
    run_in_fresh_process(request.node.nodeid)
    return True


def load(path, attn_implementation):
    from transformers import AutoModelForImageTextToText

    # MoE experts: transformers' default kernel (torch._grouped_mm) is CUDA-only, so the CPU smoke run takes the
    # eager experts; on a GPU the default runs
    experts = {"experts_implementation": "eager"} if DEVICE != "cuda" else {}
    return AutoModelForImageTextToText.from_pretrained(
        path, trust_remote_code=True, attn_implementation=attn_implementation, dtype=torch.bfloat16, **experts
    ).to(DEVICE).eval()


def on_cuda(batch):
    return {k: v.to(DEVICE) if torch.is_tensor(v) else v for k, v in batch.items()}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_real_fa2_equals_sdpa_padded_and_packed(hooked_dir, variant, family, request):
    if ran_in_a_fresh_process(request):
        return
    path = hooked_dir(variant, family=family)
    sdpa, flash = load(path, "sdpa"), load(path, "flash_attention_2")
    inputs = on_cuda(make_inputs(path, MIXED))
    valid = inputs["attention_mask"].bool()
    packed, _, _ = packed_row(flash, path)
    packed = on_cuda(packed)
    with torch.no_grad():
        torch.testing.assert_close(flash(**inputs).logits[valid].float(), sdpa(**inputs).logits[valid].float(),
                                   **BF16)
        torch.testing.assert_close(flash(**packed).logits.float(), sdpa(**packed).logits.float(), **BF16)


@pytest.mark.parametrize("variant", VARIANTS)
def test_bf16_generate_equals_full_forward_with_fused_rotary(hooked_dir, variant, request):
    if ran_in_a_fresh_process(request):
        return
    path = hooked_dir(variant)
    model = load(path, "flash_attention_2")
    inputs = on_cuda(make_inputs(path, MIXED))
    q = torch.zeros(1, 1, 1, 128, device=DEVICE, dtype=torch.bfloat16)
    assert uses_fused_rotary(q, q[0]) == (DEVICE == "cuda")  # the hook really runs the Triton kernel on a GPU
    new = 4
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=new, min_new_tokens=new, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
        mask = torch.cat([inputs["attention_mask"], torch.ones(len(MIXED), new, dtype=torch.long, device=DEVICE)], 1)
        full = model(input_ids=out.sequences, attention_mask=mask, **visual_kwargs(inputs)).logits
    length = inputs["input_ids"].shape[1]
    for step in range(new):
        torch.testing.assert_close(out.logits[step].float(), full[:, length - 1 + step].float(), **BF16)


def test_bf16_loss_and_gradients_follow_float32(hooked_dir, request):
    """The training arithmetic on the GPU: bf16 + flash-attention 2 against float32 + sdpa on the same weights and
    batch (VideoRoPE, left-padded mixed batch).  bf16 keeps 8 mantissa bits (relative rounding 2^-9 ≈ 0.2% per
    operation); through two random layers the loss moves by well under 1% and each projection's gradient by a few
    percent of its norm: loss to 1e-2 relative, gradients to 5e-2 in relative Frobenius norm."""
    if ran_in_a_fresh_process(request):
        return
    from transformers import AutoModelForImageTextToText

    path = hooked_dir("videorope")
    inputs = on_cuda(make_inputs(path, MIXED))
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    results = {}
    for dtype, attention in ((torch.float32, "sdpa"), (torch.bfloat16, "flash_attention_2")):
        model = AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=True, dtype=dtype,
                                                            attn_implementation=attention).to(DEVICE).eval()
        batch = {k: v.to(dtype) if torch.is_floating_point(v) else v for k, v in inputs.items()}
        loss = model(**batch, labels=labels).loss
        loss.backward()
        grads = {name: p.grad.float() for name, p in model.named_parameters()
                 if p.grad is not None and name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight"))}
        results[dtype] = (loss.detach().float(), grads)
    (loss32, grads32), (loss16, grads16) = results[torch.float32], results[torch.bfloat16]
    torch.testing.assert_close(loss16, loss32, rtol=1e-2, atol=0)
    assert grads32 and grads32.keys() == grads16.keys()
    for name, want in grads32.items():
        error = (grads16[name] - want).norm() / want.norm()
        assert error <= 5e-2, f"{name}: bf16 gradient off by {error:.3g} of its norm"
