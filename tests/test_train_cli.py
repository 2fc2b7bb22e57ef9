"""End to end through LLaMA-Factory's own CLI (unforked): full, LoRA + merged export, DeepSpeed ZeRO-2/3, packing.

Each run uses the repo's `recipes/tiny_cpu_sft.yaml` with path overrides, real demo videos decoded by
LLaMA-Factory's video path, and a tiny random Qwen2-VL prepared with the hook.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import free_port, load_hooked, make_inputs
from rope_reference import reference_batch_rows
from safetensors.torch import load_file

from videorope_train.rope import VARIANTS, RopeConfig

pytestmark = pytest.mark.slow  # end-to-end launches: not in `make test-fast`

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "tiny_cpu_sft.yaml"
RECIPES = {"qwen2_vl": RECIPE, "qwen3_vl": REPO / "recipes" / "tiny_qwen3vl_cpu_sft.yaml",
           "qwen3_vl_moe": REPO / "recipes" / "tiny_qwen3vl_cpu_sft.yaml"}  # the tiny twins (MoE: Qwen3-VL's template)
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def dataset_dir(demo_dataset_dir):
    return demo_dataset_dir


def run_cli(*args, env=None, timeout=900):
    environment = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}", HF_HUB_OFFLINE="1",
                       MASTER_PORT=str(free_port()), **(env or {}))
    result = subprocess.run([str(BIN / "llamafactory-cli"), *map(str, args)], cwd=REPO, env=environment,
                            capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"llamafactory-cli {args[0]} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                             f"{result.stderr[-6000:]}")
    return result


def train(model_dir, dataset_dir, output_dir, *overrides, env=None, recipe=RECIPE):
    run_cli("train", recipe, f"model_name_or_path={model_dir}", f"dataset_dir={dataset_dir}",
            f"output_dir={output_dir}", *overrides, env=env)
    losses = [json.loads(line)["loss"] for line in (output_dir / "trainer_log.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert losses and all(math.isfinite(loss) and loss > 0 for loss in losses), losses
    return losses


def weights(path):
    return load_file(str(path / "model.safetensors"))


def test_full_sft_checkpoint_is_self_describing(hooked_dir, dataset_dir, tmp_path):
    model_dir = hooked_dir("videorope")
    out = tmp_path / "full"
    train(model_dir, dataset_dir, out)
    config = json.loads((out / "config.json").read_text())
    assert config["videorope"]["variant"] == "videorope" and (out / "modeling_videorope.py").is_file()
    trained = weights(out)
    base = weights(model_dir)
    changed = [k for k in trained if k in base and not torch.equal(trained[k], base[k])]
    assert any("language_model" in k or k.startswith("model.layers") for k in changed)
    assert not any("visual" in k for k in changed), "the vision tower must stay frozen"
    # reload with plain transformers == the package's classes fed the saved weights
    from videorope_train.hook import VideoRopeQwen2VLForConditionalGeneration

    reloaded = load_hooked(out)
    direct = VideoRopeQwen2VLForConditionalGeneration.from_pretrained(out).eval()
    inputs = make_inputs(out, [("video", "What happens?"), ("text", "Hi")])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, direct(**inputs).logits, rtol=0, atol=0)
    assert type(reloaded).__module__.startswith("transformers_modules")


@pytest.mark.parametrize("family", sorted(RECIPES))
@pytest.mark.parametrize("variant", VARIANTS)
def test_positions_seen_in_training_are_the_variants(hooked_dir, dataset_dir, tmp_path, variant, family):
    """Run LLaMA-Factory's training loop in process (2 steps, every variant) and record what the model's forward
    received: LLaMA-Factory's collator builds the positions through the hook, and they equal the per-token table.
    Qwen3-VL: LLaMA-Factory's qwen3_vl plugin writes a timestamp before every temporal patch of a video."""
    from llamafactory.train.tuner import run_exp
    from transformers import TrainerCallback

    seen = []

    class Record(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            model.register_forward_pre_hook(lambda module, a, kw: seen.append(dict(kw)), with_kwargs=True)

    model_dir = hooked_dir(variant, family=family, **({"temporal_stride": 3.0} if variant == "videorope" else {}))
    import yaml

    recipe = yaml.safe_load(RECIPES[family].read_text())
    recipe.update(model_name_or_path=str(model_dir), dataset_dir=str(dataset_dir), output_dir=str(tmp_path / "o"),
                  max_steps=2, save_strategy="no")
    run_exp(args=recipe, callbacks=[Record()])
    assert seen
    config = json.loads((model_dir / "config.json").read_text())
    cfg = RopeConfig.from_dict(config["videorope"])
    saw_video = False
    for batch in seen:
        position_ids = batch["position_ids"]
        assert position_ids.shape[0] == 4  # [text; t; h; w] from the collator
        samples = reference_batch_rows(variant, config, batch["input_ids"], batch["attention_mask"],
                                       batch.get("image_grid_thw"), batch.get("video_grid_thw"),
                                       stride=cfg.temporal_stride, frame_blocks=family.startswith("qwen3_vl"))
        for row, (valid, expected, _) in enumerate(samples):  # the independent per-token table
            assert torch.equal(position_ids[1:, row][:, valid].to(torch.float64), expected), f"sample {row}"
        video = batch.get("video_grid_thw")
        if video is not None and family.startswith("qwen3_vl"):  # one vision start per temporal patch (and per image)
            images = 0 if batch.get("image_grid_thw") is None else batch["image_grid_thw"].shape[0]
            starts = int((batch["input_ids"] == config["vision_start_token_id"]).sum())
            assert starts == int(video[:, 0].sum()) + images and int(video[:, 0].max()) > 1
        saw_video |= video is not None
    assert saw_video


def test_lora_and_merged_export(hooked_dir, dataset_dir, tmp_path):
    from peft import PeftModel

    model_dir = hooked_dir("videorope")
    adapter = tmp_path / "lora"
    train(model_dir, dataset_dir, adapter, "finetuning_type=lora", "lora_target=all", "lora_rank=4",
          "learning_rate=5e-2")
    merged = tmp_path / "merged"
    run_cli("export", "--model_name_or_path", model_dir, "--adapter_name_or_path", adapter, "--template", "qwen2_vl",
            "--finetuning_type", "lora", "--trust_remote_code", "true", "--export_dir", merged)
    config = json.loads((merged / "config.json").read_text())
    assert config["videorope"]["variant"] == "videorope"
    inputs = make_inputs(model_dir, [("video", "What happens?"), ("image", "Describe it.")])
    with torch.no_grad():
        merged_logits = load_hooked(merged)(**inputs).logits
        with_adapter = PeftModel.from_pretrained(load_hooked(model_dir), adapter).eval()(**inputs).logits
        base_logits = load_hooked(model_dir)(**inputs).logits
    torch.testing.assert_close(merged_logits, with_adapter, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(merged_logits, base_logits, atol=1e-3)
