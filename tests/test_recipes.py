"""Every recipe in recipes/: parsed by LLaMA-Factory's own parser, every name and path resolves, fair
comparisons (variant recipes differ only in the prepared model), and a tiny-model twin of each runs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TRAIN_RECIPES = sorted(p for p in (REPO / "recipes").glob("*.yaml") if yaml.safe_load(p.read_text()).get("stage"))
INFER_RECIPES = sorted(p for p in (REPO / "recipes").glob("*.yaml") if p not in TRAIN_RECIPES)
# What a CPU cannot run, replaced for parsing and for the twins (everything else is the recipe's own).
CPU_OVERRIDES = {"bf16": False, "flash_attn": "sdpa"}
VARIANT_RECIPES = {"mrope": "qwen2vl7b_mrope_full_sft.yaml", "vanilla": "qwen2vl7b_vanilla_full_sft.yaml",
                   "tad": "qwen2vl7b_tad_full_sft.yaml", "mrope-interleaved": "qwen2vl7b_mrope_interleaved_full_sft.yaml"}
# The Qwen3-VL-8B twins of the authors' recipe, one per variant (videorope's is the reference of the others).
QWEN3_RECIPES = {variant: f"qwen3vl8b_{variant.replace('-', '_')}_full_sft.yaml"
                 for variant in ("videorope", "mrope-interleaved", "mrope", "tad", "vanilla")}
# What the Qwen3-VL twin changes in the authors' recipe: the model, Qwen3-VL's 32-pixel tokens (the same 768-token
# caps), its template, and room for its timestamp text (cutoff_len).
QWEN3_CHANGES = {"model_name_or_path", "output_dir", "run_name", "image_max_pixels", "video_max_pixels", "template",
                 "cutoff_len"}


def family_of(recipe):
    name = Path(recipe).name
    return "qwen3_vl" if name.startswith(("qwen3vl", "tiny_qwen3vl")) else \
        "qwen2_5_vl" if name.startswith("qwen25vl") else "qwen2_vl"


def load(path):
    return yaml.safe_load(path.read_text())


def test_there_are_recipes():
    names = {p.name for p in TRAIN_RECIPES}
    assert {"videorope_sft.yaml", "tiny_cpu_sft.yaml", "qwen2vl7b_videorope_lora_sft.yaml", "tiny_qwen3vl_cpu_sft.yaml",
            "qwen25vl7b_videorope_full_sft.yaml", *VARIANT_RECIPES.values(), *QWEN3_RECIPES.values()} <= names
    assert [p.name for p in INFER_RECIPES] == ["qwen2vl7b_videorope_yarnv_infer.yaml"]


@pytest.mark.parametrize("recipe", TRAIN_RECIPES, ids=lambda p: p.name)
def test_train_recipe_parses_and_resolves(recipe, hooked_dir):
    from llamafactory.data.template import TEMPLATES
    from llamafactory.hparams.parser import _parse_train_args

    args = load(recipe)
    dataset_info = json.loads((REPO / args["dataset_dir"] / "dataset_info.json").read_text())
    for name in args["dataset"].split(","):
        assert name.strip() in dataset_info, f"{recipe.name}: dataset {name} not in dataset_info.json"
    assert args["template"] in TEMPLATES
    assert args["trust_remote_code"] is True
    if "deepspeed" in args:
        json.loads((REPO / args["deepspeed"]).read_text())
    model_args, data_args, training_args, finetuning_args, _ = _parse_train_args(
        {**args, **CPU_OVERRIDES, "model_name_or_path": str(hooked_dir("videorope", family=family_of(recipe)))}
    )
    assert finetuning_args.freeze_vision_tower and finetuning_args.stage == "sft"
    assert model_args.trust_remote_code


@pytest.mark.parametrize("recipe", INFER_RECIPES, ids=lambda p: p.name)
def test_infer_recipe_parses(recipe, hooked_dir):
    from llamafactory.hparams.parser import get_infer_args

    args = {**load(recipe), "flash_attn": "sdpa", "infer_dtype": "float32",
            "model_name_or_path": str(hooked_dir("videorope", extrapolation="yarn-v", extrapolation_factor=4.0))}
    model_args = get_infer_args(args)[0]
    assert model_args.trust_remote_code


def test_authors_recipe_numbers():
    args = load(REPO / "recipes" / "videorope_sft.yaml")
    assert (args["cutoff_len"], args["learning_rate"], args["num_train_epochs"], args["lr_scheduler_type"]) == (
        8200, 1e-5, 1.0, "cosine")
    assert args["warmup_steps"] == 0.1 and args["bf16"] and args["flash_attn"] == "fa2"
    assert (args["video_fps"], args["video_maxlen"], args["finetuning_type"]) == (2.0, 128, "full")
    assert args["per_device_train_batch_size"] * 16 * args["gradient_accumulation_steps"] == 128
    assert load(REPO / args["deepspeed"])["zero_optimization"]["stage"] == 3


@pytest.mark.parametrize("variant", sorted(VARIANT_RECIPES))
def test_baselines_differ_only_in_the_model(variant):
    reference = load(REPO / "recipes" / "videorope_sft.yaml")
    recipe = load(REPO / "recipes" / VARIANT_RECIPES[variant])
    differing = {key for key in set(reference) | set(recipe) if reference.get(key) != recipe.get(key)}
    assert differing == {"model_name_or_path", "output_dir", "run_name"}
    assert variant in recipe["model_name_or_path"] and variant in recipe["run_name"]


@pytest.mark.parametrize("variant", sorted(QWEN3_RECIPES))
def test_qwen3_recipes_are_the_authors_recipe_on_qwen3vl(variant):
    reference = load(REPO / "recipes" / "videorope_sft.yaml")
    recipe = load(REPO / "recipes" / QWEN3_RECIPES[variant])
    differing = {key for key in set(reference) | set(recipe) if reference.get(key) != recipe.get(key)}
    assert differing == QWEN3_CHANGES
    assert recipe["template"] == "qwen3_vl_nothink" and recipe["image_max_pixels"] == 768 * 32 * 32
    assert recipe["cutoff_len"] == reference["cutoff_len"] + 64 * 10  # 128 frames = 64 timestamps of <= 10 tokens
    slug = "videorope-d2" if variant == "videorope" else variant
    assert recipe["model_name_or_path"] == f"models/qwen3vl8b-{variant}" and recipe["run_name"] == f"qwen3vl8b-{slug}-128f-8k"
    videorope = load(REPO / "recipes" / QWEN3_RECIPES["videorope"])
    assert {k for k in set(videorope) | set(recipe) if videorope.get(k) != recipe.get(k)} <= {
        "model_name_or_path", "output_dir", "run_name"}


# The baselines' twins would repeat videorope_sft.yaml's (test_baselines_differ_only_in_the_model proves they differ
# only in the model; every variant trains through LLaMA-Factory in test_train_cli.py), the Qwen3-VL baselines'
# qwen3vl8b_videorope_full_sft.yaml's likewise, and tiny_cpu_sft.yaml / tiny_qwen3vl_cpu_sft.yaml are what `make demo`
# and test_train_cli.py / test_resume.py train: one tiny twin for each distinct recipe.
TWINS = [p for p in TRAIN_RECIPES if p.name not in {*VARIANT_RECIPES.values(), "tiny_cpu_sft.yaml",
                                                     "tiny_qwen3vl_cpu_sft.yaml",
                                                     *[QWEN3_RECIPES[v] for v in QWEN3_RECIPES if v != "videorope"]}]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", TWINS, ids=lambda p: p.name)
def test_tiny_twin_runs(recipe, hooked_dir, demo_dataset_dir, tmp_path):
    args = load(recipe)
    variant = next((v for v, name in VARIANT_RECIPES.items() if name == recipe.name), "videorope")
    family = family_of(recipe)
    overrides = {
        **CPU_OVERRIDES,
        "model_name_or_path": hooked_dir(variant, family=family),
        "dataset": "videorope_demo",
        "dataset_dir": demo_dataset_dir,
        "output_dir": tmp_path / "out",
        "max_steps": 1,
        "cutoff_len": 1024,
        "video_maxlen": 8,
        "video_max_pixels": 6272,
        "image_max_pixels": 12544,
        "preprocessing_num_workers": 1,
        "dataloader_num_workers": 0,
        "report_to": "none",
        "gradient_accumulation_steps": 1,
        "deepspeed": "null",  # ZeRO runs are covered by tests/test_train_cli.py (2 processes)
        "save_steps": 1000,
    }
    command = [str(BIN / "llamafactory-cli"), "train", str(recipe), *[f"{k}={v}" for k, v in overrides.items()]]
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}", HF_HUB_OFFLINE="1")
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-5000:]
    assert (tmp_path / "out" / ("adapter_config.json" if args["finetuning_type"] == "lora" else "model.safetensors")).is_file()
