"""CUDA-only checks with the real flash-attn kernels (run by scripts/gpu_check.sh; skipped on machines without them).

The CPU suite proves the same paths with the flash_attn stand-in (test_flash_attention.py); here the real kernels,
bf16, and the fused rotary kernel that the hook picks on CUDA.
"""

import importlib.util

import pytest
import torch
from conftest import make_inputs, run_in_fresh_process, stand_in_loaded
from test_flash_attention import packed_row
from test_hook import MIXED, visual_kwargs

from videorope_train.rope import VARIANTS, uses_fused_rotary

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("flash_attn") is None,
    reason="needs a CUDA device and flash-attn (scripts/gpu_check.sh)",
)
BF16 = {"rtol": 3e-2, "atol": 3e-2}


def ran_in_a_fresh_process(request) -> bool:
    """In a whole-suite run the stand-in is already loaded here (test_flash_attention.py): run this test in a child
    process with the real kernels instead, and require that it passed there."""
    if not stand_in_loaded():
        return False
    run_in_fresh_process(request.node.nodeid)
    return True


def load(path, attn_implementation):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(
        path, trust_remote_code=True, attn_implementation=attn_implementation, dtype=torch.bfloat16
    ).to("cuda").eval()


def on_cuda(batch):
    return {k: v.to("cuda") if torch.is_tensor(v) else v for k, v in batch.items()}


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
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
    q = torch.zeros(1, 1, 1, 128, device="cuda", dtype=torch.bfloat16)
    assert uses_fused_rotary(q, q[0])  # the hook really runs the Triton kernel on this GPU
    new = 4
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=new, min_new_tokens=new, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
        mask = torch.cat([inputs["attention_mask"], torch.ones(len(MIXED), new, dtype=torch.long, device="cuda")], 1)
        full = model(input_ids=out.sequences, attention_mask=mask, **visual_kwargs(inputs)).logits
    length = inputs["input_ids"].shape[1]
    for step in range(new):
        torch.testing.assert_close(out.logits[step].float(), full[:, length - 1 + step].float(), **BF16)
