"""The GPU recipes' training path through the unforked `llamafactory-cli`, on CPU: flash-attention 2 (transformers'
real integration, the kernels from tools/torch_flash_attn), bf16, neat packing, ZeRO-3 on 2 processes; and the
positions the rotary consumes in bf16 runs, against the independent per-token reference."""

import glob
import json
import os

import pytest
import torch
from conftest import SITE
from rope_reference import reference_batch_rows
from test_train_cli import RECIPES, train

pytestmark = pytest.mark.slow  # end-to-end launches: not in `make test-fast`

BF16 = ("bf16=true", "use_cpu=true")  # bf16 on CPU: transformers wants use_cpu said explicitly
FA2 = ("flash_attn=fa2", *BF16)


def kernel_calls(report_prefix):
    """flash_attn stand-in calls summed over the processes that wrote a report."""
    totals = {}
    for path in glob.glob(f"{report_prefix}.*.json"):
        for name, count in json.loads(open(path).read()).items():
            totals[name] = totals.get(name, 0) + count
    return totals


def fa2_env(tmp_path, **extra):
    return {"PYTHONPATH": os.pathsep.join(filter(None, [SITE, os.environ.get("PYTHONPATH")])),
            "FLASH_ATTN_CPU": "1", "FLASH_ATTN_CALLS_REPORT": str(tmp_path / "kernel"), **extra}


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
def test_fa2_bf16_neat_packing(hooked_dir, demo_dataset_dir, tmp_path, family):
    out = tmp_path / "fa2-packed"
    train(hooked_dir("videorope", family=family), demo_dataset_dir, out, *FA2, "packing=true", "neat_packing=true",
          "cutoff_len=512", "per_device_train_batch_size=1", env=fa2_env(tmp_path), recipe=RECIPES[family])
    calls = kernel_calls(tmp_path / "kernel")
    # the packed rows really went through flash-attn, in bf16 (the stand-in refuses float32 as the kernel does)
    assert calls.get("flash_attn_varlen_func", 0) > 0, calls
    assert (out / "model.safetensors").is_file()


def test_fa2_zero3_two_processes(hooked_dir, demo_dataset_dir, tmp_path):
    """ZeRO-3 over 2 gloo processes with fa2.  In float32: transformers accepts bf16 on a machine without a GPU only
    with use_cpu, which turns DeepSpeed off (each rank alone), so the stand-in is told to take float32 here."""
    out = tmp_path / "fa2-z3"
    train(hooked_dir("videorope"), demo_dataset_dir, out, "flash_attn=fa2",
          "deepspeed=recipes/deepspeed/ds_z3_config.json", "per_device_train_batch_size=2",
          env=fa2_env(tmp_path, FORCE_TORCHRUN="1", NPROC_PER_NODE="2",
                      FLASH_ATTN_CPU_ALLOW_FP32="1"))
    assert len(glob.glob(str(tmp_path / "kernel.*.json"))) >= 2  # both ranks ran the kernels
    assert kernel_calls(tmp_path / "kernel").get("flash_attn_varlen_func", 0) > 0


@pytest.mark.parametrize("stride", [2.0, 1.5])
def test_bf16_positions_at_the_rotary_equal_the_reference(hooked_dir, demo_dataset_dir, tmp_path, stride):
    """bf16 through llamafactory-cli (the collator casts floating tensors to bf16): what the rotary consumes, after
    the hook's normalisation, equals the spec's per-token table for every valid token of every sample."""
    model_dir = hooked_dir("videorope", temporal_stride=stride)
    record = tmp_path / "positions"
    train(model_dir, demo_dataset_dir, tmp_path / "o", *BF16, "max_steps=2",
          env={"PYTHONPATH": SITE, "VIDEOROPE_RECORD_POSITIONS": str(record)})
    config = json.loads((model_dir / "config.json").read_text())
    steps = sorted(record.glob("step-*.pt"))
    assert len(steps) == 2
    fractional = collator_cast = False
    for step in steps:
        batch = torch.load(step)
        positions = batch["rotary_position_ids"]  # [3, B, L] as the rotary got it
        assert positions.dtype == (torch.long if stride == 2.0 else torch.float32)
        collator_cast |= batch["collator_position_ids"].dtype == torch.bfloat16
        samples = reference_batch_rows("videorope", config, batch["input_ids"], batch["attention_mask"],
                                       batch["image_grid_thw"], batch["video_grid_thw"], stride=stride)
        for row, (valid, expected, _) in enumerate(samples):
            got = positions[:, row][:, valid].to(torch.float64)
            assert torch.equal(got, expected), f"{step.name} sample {row}"
            fractional |= bool((got.frac() != 0).any())
    assert fractional == (stride == 1.5)
    assert collator_cast == (stride == 1.5)  # δ = 1.5 positions really arrived in bf16 and were rebuilt
