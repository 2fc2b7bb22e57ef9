"""Launch plan (grad accumulation, resume, W&B identity), the local launcher, and W&B offline run files."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from videorope_train.launch import gradient_accumulation, last_checkpoint, launch_plan, run_identity

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_gradient_accumulation_keeps_global_batch():
    assert gradient_accumulation(1, 16, 128) == 8  # the authors': 2 nodes x 8 GPUs
    assert gradient_accumulation(1, 32, 128) == 4
    assert gradient_accumulation(2, 8, 128) == 8
    with pytest.raises(ValueError, match="not divisible"):
        gradient_accumulation(1, 24, 128)


def test_identity_from_model_config(hooked_dir, tmp_path):
    args = {"model_name_or_path": str(hooked_dir("videorope")), "video_maxlen": 128, "cutoff_len": 8200}
    identity = run_identity(args)
    assert identity["name"].endswith("-videorope-d2-128f-8k") and identity["group"].endswith("-128f-8k")
    assert "videorope" in identity["tags"] and "d2" in identity["tags"]
    mrope = run_identity({**args, "model_name_or_path": str(hooked_dir("mrope"))})
    assert mrope["group"] == identity["group"] and "-mrope-128f-8k" in mrope["name"]
    yarn = run_identity({**args, "model_name_or_path": str(hooked_dir("videorope", temporal_stride=1.5,
                                                                          extrapolation="yarn-v",
                                                                          extrapolation_factor=4.0))})
    assert yarn["name"].endswith("-videorope-d1.5-yarn-v-s4-128f-8k")
    with pytest.raises(FileNotFoundError, match="prepare the model first"):
        run_identity({**args, "model_name_or_path": str(tmp_path)})


def test_last_checkpoint_skips_incomplete(tmp_path):
    assert last_checkpoint(tmp_path) is None
    for step, complete in [(100, True), (200, True), (300, False)]:
        (tmp_path / f"checkpoint-{step}").mkdir()
        if complete:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert last_checkpoint(tmp_path).name == "checkpoint-200"


def test_plan_for_authors_recipe(hooked_dir, tmp_path, flash_attn_cpu):  # fa2 recipe: flash-attn must be usable
    plan = launch_plan(REPO / "recipes" / "videorope_sft.yaml", nodes=4, gpus_per_node=8, global_batch=128,
                       overrides=[f"model_name_or_path={hooked_dir('videorope')}", f"output_dir={tmp_path}"])
    assert "gradient_accumulation_steps=4" in plan["overrides"] and plan["resume"] is None


def test_plan_respects_explicit_accumulation_and_rejects_zero(hooked_dir, tmp_path, flash_attn_cpu):
    model = f"model_name_or_path={hooked_dir('videorope')}"
    recipe = REPO / "recipes" / "videorope_sft.yaml"
    plan = launch_plan(recipe, 2, 8, 128, [model, f"output_dir={tmp_path}", "gradient_accumulation_steps=2"])
    assert [o for o in plan["overrides"] if o.startswith("gradient_accumulation_steps")] == [
        "gradient_accumulation_steps=2"]
    with pytest.raises(ValueError, match="at least 1 node"):
        launch_plan(recipe, 2, 0, 128, [model])


def broken_flash_attn(root):
    """A flash-attn install whose CUDA extension does not load (a wheel built for another torch)."""
    (root / "flash_attn").mkdir(parents=True)
    (root / "flash_attn" / "__init__.py").write_text(
        'raise ImportError("flash_attn_2_cuda.so: undefined symbol: _ZN3c104cuda9SetDeviceEi")\n')
    (root / "flash_attn-2.8.3.dist-info").mkdir()
    (root / "flash_attn-2.8.3.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: flash_attn\n"
                                                                  "Version: 2.8.3\n")
    (root / "flash_attn-2.8.3.dist-info" / "top_level.txt").write_text("flash_attn\n")
    return str(root)


@pytest.mark.parametrize("stand_in", ["none", "no CUDA", "broken wheel"])
def test_fa2_recipe_stops_before_training_without_usable_flash_attn(hooked_dir, tmp_path, stand_in):
    """A node where transformers cannot use flash-attn: LLaMA-Factory would warn and train with sdpa; the launcher
    stops with what to install, and writes nothing."""
    from conftest import SITE

    out = tmp_path / "out"
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}", HF_HUB_OFFLINE="1")
    env.pop("FLASH_ATTN_CPU", None)
    if stand_in == "no CUDA":  # flash-attn installed and loadable, but no CUDA device on this machine
        env["PYTHONPATH"] = SITE
    elif stand_in == "broken wheel":
        env["PYTHONPATH"] = broken_flash_attn(tmp_path / "site")
    result = subprocess.run([str(BIN / "videorope-train"), "launch-plan", "recipes/videorope_sft.yaml",
                             f"model_name_or_path={hooked_dir('videorope')}", f"output_dir={out}"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    reason = {"none": "flash-attn is not installed", "no CUDA": "needs a visible CUDA device",
              "broken wheel": "flash-attn 2.8.3 does not load with torch"}[stand_in]
    assert reason in result.stderr and "pip install flash-attn==2.8.3" in result.stderr, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and not out.exists()


def test_plan_adds_the_stop_callback_and_consumes_the_previous_request(hooked_dir, tmp_path, flash_attn_cpu):
    """report_to gains stop_callback's name (the recipe's loggers kept); a stop request left by the job that
    stopped on it is removed, or the resumed job would stop again at its first step."""
    from videorope_train.graceful_stop import STOP_FILE
    from videorope_train.launch import shell_lines

    model = f"model_name_or_path={hooked_dir('videorope')}"
    plan = launch_plan(REPO / "recipes" / "videorope_sft.yaml", 1, 8, 128, [model, f"output_dir={tmp_path}"])
    assert [o for o in plan["overrides"] if o.startswith("report_to")] == ["report_to=[wandb,videorope_stop]"]
    tiny = REPO / "recipes" / "tiny_cpu_sft.yaml"  # report_to: none
    (tmp_path / STOP_FILE).touch()
    plan = launch_plan(tiny, 1, 1, None, [model, f"output_dir={tmp_path}"])
    assert [o for o in plan["overrides"] if o.startswith("report_to")] == ["report_to=[videorope_stop]"]
    assert not (tmp_path / STOP_FILE).exists()
    assert f"STOP_FILE={tmp_path.resolve() / STOP_FILE}" in shell_lines(plan).splitlines()
    plan = launch_plan(tiny, 1, 1, None, [model, f"output_dir={tmp_path}", "report_to=[tensorboard,wandb]"])
    assert plan["overrides"][-1] == "report_to=[tensorboard,wandb,videorope_stop]"


def test_plan_refuses_a_model_whose_remote_code_does_not_register_the_stop_callback(hooked_dir, tmp_path):
    """A directory prepared before the remote code registered the callback: transformers would reject
    report_to=videorope_stop only after the model loaded; the plan stops first, with the fix."""
    model = Path(hooked_dir("videorope"))
    stale = tmp_path / "stale-model"
    shutil.copytree(model, stale, symlinks=True)
    remote = stale / "modeling_videorope.py"
    remote.write_text("\n".join(line for line in remote.read_text().splitlines() if "_stop" not in line) + "\n")
    tiny = REPO / "recipes" / "tiny_cpu_sft.yaml"
    with pytest.raises(ValueError, match="older videorope-train.*re-run `videorope-train prepare-model`"):
        launch_plan(tiny, 1, 1, None, [f"model_name_or_path={stale}", f"output_dir={tmp_path / 'out'}"])
    assert not (tmp_path / "out").exists()  # nothing written
