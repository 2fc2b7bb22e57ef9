"""Flash-attention 2 on CPU: transformers' real integration, only the CUDA kernels stood in (tools/torch_flash_attn).

The hooked model with ``attn_implementation="flash_attention_2"`` must equal sdpa (forward and backward) on a
left-padded mixed batch, on a packed row in LLaMA-Factory's layout, and in ``generate``; the packed row's varlen
boundaries must come from the model once per forward, not from transformers' per-layer detection.
"""

import pytest
import torch
from conftest import FAMILIES, FLASH_ATTN_DIR, SITE, fresh_process_env, make_inputs, run_in_fresh_process, stand_in_loaded
from test_hook import MIXED, visual_kwargs

from videorope_train.hook.compat import FLASH_SINK_BUG, TRANSFORMERS_VERSION
from videorope_train.rope import VARIANTS



@pytest.fixture(scope="module")
def fa2(flash_attn_cpu, monkeypatch_module):
    """float32 allowed in the stand-in, so fa2 and sdpa can be compared tightly (the real kernel wants bf16/fp16,
    which the bf16 tests below and the CLI tests use)."""
    monkeypatch_module.setenv("FLASH_ATTN_CPU_ALLOW_FP32", "1")
    return flash_attn_cpu


def load(path, attn_implementation, dtype=torch.float32):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(
        path, trust_remote_code=True, attn_implementation=attn_implementation, dtype=dtype
    ).eval()


def pair(path, dtype=torch.float32):
    """(sdpa model, flash_attention_2 model) with the same weights."""
    sdpa, flash = load(path, "sdpa", dtype), load(path, "flash_attention_2", dtype)
    assert flash.config._attn_implementation == "flash_attention_2"
    assert flash.config.vision_config._attn_implementation == "flash_attention_2"
    return sdpa, flash


def loss_and_grads(model, inputs, labels):
    model.zero_grad()
    out = model(**inputs, labels=labels)
    out.loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return out, grads


def assert_grads_close(got, want, **tolerance):
    assert got.keys() == want.keys() and any("visual" in name for name in got)
    for name in want:
        torch.testing.assert_close(got[name], want[name], msg=name, **tolerance)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_fa2_equals_sdpa_on_a_left_padded_mixed_batch(hooked_dir, fa2, variant, family):
    path = hooked_dir(variant, family=family)
    sdpa, flash = pair(path)
    inputs = make_inputs(path, MIXED)
    valid = inputs["attention_mask"].bool()
    assert not valid.all()  # the batch really is padded
    labels = inputs["input_ids"].masked_fill(~valid, -100)
    before = dict(fa2.CALLS)
    want, want_grads = loss_and_grads(sdpa, inputs, labels)
    got, got_grads = loss_and_grads(flash, inputs, labels)
    # varlen: the padded language-model layers and the vision tower (2 layers each in the tiny model)
    assert fa2.CALLS["flash_attn_varlen_func"] - before["flash_attn_varlen_func"] >= 4
    torch.testing.assert_close(got.logits[valid], want.logits[valid], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.loss, want.loss, rtol=1e-6, atol=1e-6)
    assert_grads_close(got_grads, want_grads, rtol=1e-4, atol=1e-5)


def packed_row(model, path):
    """Two samples packed in one row as LLaMA-Factory does with neat_packing + fa2: no attention mask, positions
    [text; t; h; w] with each sample numbered from 0 and the text row = the t row."""
    first = make_inputs(path, [MIXED[0]])
    second = make_inputs(path, [MIXED[2]])
    rows = torch.cat([model.get_rope_index(**first)[0], model.get_rope_index(**second)[0]], dim=-1)
    packed = {
        "input_ids": torch.cat([first["input_ids"], second["input_ids"]], dim=1),
        "position_ids": torch.cat([rows[:1], rows], dim=0),
        "pixel_values": second["pixel_values"],
        "image_grid_thw": second["image_grid_thw"],
        "pixel_values_videos": first["pixel_values_videos"],
        "video_grid_thw": first["video_grid_thw"],
        "use_cache": False,
    }
    return packed, first, second


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("variant", ["videorope", "mrope"])
def test_fa2_packed_row_equals_separate_samples_and_sdpa(hooked_dir, fa2, variant, family, monkeypatch):
    from transformers import modeling_flash_attention_utils as fa_utils

    path = hooked_dir(variant, family=family)
    sdpa, flash = pair(path)
    packed, first, second = packed_row(flash, path)
    split = first["input_ids"].shape[1]
    with torch.no_grad():
        alone = [flash(**first).logits, flash(**second).logits]

    # The once-per-forward path: boundaries handed to every layer; transformers never derives them from positions
    # (which would cost a host sync per layer) and the kernel gets the longest length as an int.
    derived = []
    monkeypatch.setattr(fa_utils, "prepare_fa_kwargs_from_position_ids",
                        lambda *args, **kwargs: derived.append(1) or pytest.fail("boundaries derived per layer"))
    seen_positions = []
    original = fa_utils._is_packed_sequence
    monkeypatch.setattr(fa_utils, "_is_packed_sequence",
                        lambda position_ids, batch_size: seen_positions.append(position_ids) or original(
                            position_ids, batch_size))
    del fa2.LAST_VARLEN_MAX_SEQLEN[:]
    labels = packed["input_ids"].clone()
    got, got_grads = loss_and_grads(flash, packed, labels)
    layers = flash.config.text_config.num_hidden_layers
    # every flash call (language model and vision tower) came without positions to re-derive boundaries from
    assert len(seen_positions) >= layers and all(p is None for p in seen_positions) and not derived
    language_calls = [m for m in fa2.LAST_VARLEN_MAX_SEQLEN if isinstance(m, int)]
    assert language_calls == [max(split, packed["input_ids"].shape[1] - split)] * layers

    want, want_grads = loss_and_grads(sdpa, packed, labels)
    torch.testing.assert_close(got.logits, want.logits, rtol=1e-5, atol=1e-5)
    assert_grads_close(got_grads, want_grads, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got.logits[:, :split], alone[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got.logits[:, split:], alone[1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("variant, settings", [(v, {}) for v in VARIANTS] + [("videorope", {"temporal_stride": 1.5})])
def test_fa2_generate_with_cache_equals_sdpa_and_full_forward(hooked_dir, fa2, variant, settings, family):
    path = hooked_dir(variant, family=family, **settings)
    sdpa, flash = pair(path)
    inputs = make_inputs(path, MIXED)
    new = 4
    config = sdpa.config  # a random model may emit a visual token, which the full forward cannot re-read
    kwargs = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False, output_logits=True,
                  return_dict_in_generate=True,
                  suppress_tokens=[config.image_token_id, config.video_token_id, config.vision_start_token_id])
    with torch.no_grad():
        got = flash.generate(**inputs, **kwargs)
        want = sdpa.generate(**inputs, **kwargs)
        mask = torch.cat([inputs["attention_mask"], torch.ones(len(MIXED), new, dtype=torch.long)], dim=1)
        full = flash(input_ids=got.sequences, attention_mask=mask, **visual_kwargs(inputs)).logits
    assert torch.equal(got.sequences, want.sequences)
    length = inputs["input_ids"].shape[1]
    for step in range(new):
        torch.testing.assert_close(got.logits[step], want.logits[step], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got.logits[step], full[:, length - 1 + step], rtol=1e-4, atol=1e-4)


def test_fa2_bf16_close_to_sdpa(hooked_dir, flash_attn_cpu, monkeypatch):
    """In bf16, as on GPUs (the stand-in refuses float32 like the real kernel), forward and generate."""
    monkeypatch.delenv("FLASH_ATTN_CPU_ALLOW_FP32", raising=False)
    path = hooked_dir("videorope", temporal_stride=1.5)
    sdpa, flash = pair(path, torch.bfloat16)
    inputs = make_inputs(path, MIXED)
    inputs["pixel_values"], inputs["pixel_values_videos"] = (inputs[k].to(torch.bfloat16)
                                                             for k in ("pixel_values", "pixel_values_videos"))
    valid = inputs["attention_mask"].bool()
    with torch.no_grad():
        got, want = flash(**inputs).logits.float(), sdpa(**inputs).logits.float()
        torch.testing.assert_close(got[valid], want[valid], rtol=0.05, atol=0.05)
        out = flash.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
        mask = torch.cat([inputs["attention_mask"], torch.ones(len(MIXED), 3, dtype=torch.long)], dim=1)
        full = flash(input_ids=out.sequences, attention_mask=mask, **visual_kwargs(inputs)).logits.float()
    length = inputs["input_ids"].shape[1]
    for step in range(3):
        torch.testing.assert_close(out.logits[step].float(), full[:, length - 1 + step], rtol=0.05, atol=0.05)
    with pytest.raises(RuntimeError, match="only support fp16 and bf16"):
        with torch.no_grad():
            load(path, "flash_attention_2", torch.float32)(**make_inputs(path, [MIXED[1]]))


@pytest.mark.skipif(TRANSFORMERS_VERSION not in FLASH_SINK_BUG, reason="only releases with transformers issue 45588")
def test_the_sink_guard_is_what_keeps_fa2_alive_and_is_scoped(hooked_dir, tiny_base, fa2, monkeypatch):
    """Without the hook's guard the same forward crashes as on every GPU (transformers issue 45588); a stock model
    in the same process still crashes, so nothing global was patched."""
    from videorope_train.hook import compat

    path = hooked_dir("videorope")
    inputs = make_inputs(path, MIXED)
    flash = load(path, "flash_attention_2")
    with torch.no_grad():
        flash(**inputs)  # guarded: runs
        stock = load(tiny_base, "flash_attention_2")
        with pytest.raises(AttributeError, match="'NoneType' object has no attribute 'to'"):
            stock(**inputs)
        monkeypatch.setattr(compat, "FLASH_SINK_BUG", set())  # as if the release were fixed: no guard
        with pytest.raises(AttributeError, match="'NoneType' object has no attribute 'to'"):
            flash(**inputs)


@pytest.mark.slow
def test_a_fresh_process_finds_the_machines_flash_attn_not_the_stand_in(fa2, monkeypatch):
    """What tests/test_gpu.py relies on when the whole suite runs on a GPU: with the stand-in loaded here, and the
    start-up variables a subprocess test may leave set, a child started with ``fresh_process_env`` finds the
    flash_attn the machine has (none on a CPU machine), where the unscrubbed environment finds the stand-in; and
    ``run_in_fresh_process`` accepts a pass only (a test skipped in the child is an error)."""
    import os
    import subprocess
    import sys

    assert stand_in_loaded()
    monkeypatch.setenv("FLASH_ATTN_CPU", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([SITE, os.environ.get("PYTHONPATH", "")]))
    probe = [sys.executable, "-c",
             "import importlib.util as u; s = u.find_spec('flash_attn'); print(s.origin if s else None)"]
    leaked = subprocess.run(probe, env=dict(os.environ), capture_output=True, text=True, check=True).stdout
    fresh = subprocess.run(probe, env=fresh_process_env(), capture_output=True, text=True, check=True).stdout
    assert FLASH_ATTN_DIR in leaked and FLASH_ATTN_DIR not in fresh
    run_in_fresh_process("tests/test_video_budget.py::test_budget_formula")
    if not torch.cuda.is_available():  # test_gpu.py skips on this machine: refused, not taken for a pass
        with pytest.raises(AssertionError, match="in a fresh process: .*skipped"):
            run_in_fresh_process("tests/test_gpu.py::test_bf16_generate_equals_full_forward_with_fused_rotary[mrope]")
