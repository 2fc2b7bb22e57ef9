"""A restarted job continues the same run, in every mode the recipes use.

For each mode, an uninterrupted run of 6 steps (checkpoints every 3) is the reference; a second output directory
holding only that run's checkpoint-3 — what a job stopped after step 3 leaves — is restarted through the project's
launcher (`scripts/train_local.sh`), which resumes from it.  The restarted run must end with the same weights
(fp32: max |difference| <= 1e-6) and the same loss history.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow  # end-to-end launches: not in `make test-fast`

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

MODES = {
    # name: (processes, overrides, weights file)
    "full, no DeepSpeed": (1, [], "model.safetensors"),
    "ZeRO-2": (2, ["deepspeed=recipes/deepspeed/ds_z2_config.json"], "model.safetensors"),
    "ZeRO-3": (2, ["deepspeed=recipes/deepspeed/ds_z3_config.json"], "model.safetensors"),
    "ZeRO-3 offload": (2, ["deepspeed=recipes/deepspeed/ds_z3_offload_config.json"], "model.safetensors"),
    "LoRA": (1, ["finetuning_type=lora", "lora_target=all", "lora_rank=4", "learning_rate=5e-2"],
             "adapter_model.safetensors"),
    "Qwen3-VL, ZeRO-3": (2, ["deepspeed=recipes/deepspeed/ds_z3_config.json"], "model.safetensors"),
}
FAMILY = {"Qwen3-VL, ZeRO-3": "qwen3_vl"}  # the other modes train the tiny Qwen2-VL
RECIPE = {"qwen2_vl": "recipes/tiny_cpu_sft.yaml", "qwen3_vl": "recipes/tiny_qwen3vl_cpu_sft.yaml"}


def hooked_model(hooked_dir, mode):
    return hooked_dir("videorope", family=FAMILY.get(mode, "qwen2_vl"))

def launch(model_dir, dataset_dir, output_dir, processes, overrides, extra_env=None, recipe=RECIPE["qwen2_vl"]):
    from conftest import free_port

    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}", HF_HUB_OFFLINE="1", SKIP_DATA_CHECK="1",
               MASTER_PORT=str(free_port()), **(extra_env or {}))
    command = ["bash", "scripts/train_local.sh", recipe, str(processes),
               f"model_name_or_path={model_dir}", f"dataset_dir={dataset_dir}", f"output_dir={output_dir}",
               "save_steps=3", "per_device_train_batch_size=1", "max_steps=6", *overrides]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    return result


def loss_history(output_dir):
    """{step: loss} of the whole run, as the final trainer_state.json records it (restored history included)."""
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return {entry["step"]: entry["loss"] for entry in state["log_history"] if "loss" in entry}


def stopped_after(reference, step, target):
    """An output directory as a job stopped after ``step`` leaves it: that checkpoint only."""
    target.mkdir()
    shutil.copytree(reference / f"checkpoint-{step}", target / f"checkpoint-{step}")
    return target


@pytest.fixture(scope="module")
def uninterrupted(hooked_dir, demo_dataset_dir, tmp_path_factory):
    """uninterrupted(mode): the output dir of that mode's uninterrupted 6-step run (run once per module)."""
    runs = {}

    def run(mode):
        if mode not in runs:
            processes, overrides, _ = MODES[mode]
            reference = tmp_path_factory.mktemp("uninterrupted")
            result = launch(hooked_model(hooked_dir, mode), demo_dataset_dir, reference, processes, overrides,
                            recipe=RECIPE[FAMILY.get(mode, "qwen2_vl")])
            assert result.returncode == 0, result.stderr[-5000:]
            runs[mode] = reference
        return runs[mode]

    return run


@pytest.mark.parametrize("mode", list(MODES))
def test_restarted_run_equals_uninterrupted(hooked_dir, demo_dataset_dir, tmp_path, uninterrupted, mode):
    processes, overrides, weights_file = MODES[mode]
    model_dir = hooked_model(hooked_dir, mode)
    reference = uninterrupted(mode)
    restarted = stopped_after(reference, 3, tmp_path / "restarted")
    result = launch(model_dir, demo_dataset_dir, restarted, processes, overrides,
                    recipe=RECIPE[FAMILY.get(mode, "qwen2_vl")])
    assert result.returncode == 0, result.stderr[-5000:]
    assert "Continuing training from checkpoint" in result.stdout + result.stderr or \
        "Resuming training from checkpoint" in result.stdout + result.stderr
    assert loss_history(restarted) == pytest.approx(loss_history(reference), abs=1e-6)
    assert sorted(loss_history(restarted)) == list(range(1, 7))
    want, got = load_file(reference / weights_file), load_file(restarted / weights_file)
    assert want.keys() == got.keys() and want
    worst = max((want[k].float() - got[k].float()).abs().max().item() for k in want)
    assert worst <= 1e-6, f"{mode}: final weights differ by {worst}"
    base = load_file(reference / "checkpoint-3" / weights_file)
    assert any(not torch.equal(base[k], want[k]) for k in want)  # steps 4-6 really changed the weights
    if weights_file == "model.safetensors":  # ZeRO-2/3 gathered a model that loads as the hooked variant again
        from conftest import load_hooked

        reloaded = load_hooked(reference)
        assert reloaded.rope.variant == "videorope"
        assert type(reloaded).__name__.startswith("VideoRope" + ("Qwen3VL" if mode in FAMILY else "Qwen2VL"))


def test_stop_on_request_checkpoints_at_the_next_step_and_resumes_exactly(hooked_dir, demo_dataset_dir, tmp_path,
                                                                           uninterrupted):
    """ZeRO-3 on 2 processes (where ranks stopping at different steps would hang in mismatched collectives): the
    stop request arrives while both ranks are at step 4 (no periodic checkpoint there: save_steps=3). Both save
    checkpoint-4 and exit 0 without writing a final model; the relaunch resumes from step 4 and ends equal to the
    uninterrupted run."""
    from conftest import SITE, free_port

    from videorope_train.graceful_stop import stop_file

    processes, overrides, weights_file = MODES["ZeRO-3"]
    reference = uninterrupted("ZeRO-3")
    out = tmp_path / "stopped"
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}", HF_HUB_OFFLINE="1", SKIP_DATA_CHECK="1",
               MASTER_PORT=str(free_port()), PYTHONPATH=SITE, VIDEOROPE_HOLD_AT_STEP="4")
    command = ["bash", "scripts/train_local.sh", RECIPE["qwen2_vl"], str(processes),
               f"model_name_or_path={hooked_dir('videorope')}", f"dataset_dir={demo_dataset_dir}",
               f"output_dir={out}", "save_steps=3", "per_device_train_batch_size=1", "max_steps=6", *overrides]
    job = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 600
        while not all((out / f"held-at-step-4.{rank}").exists() for rank in range(processes)):
            assert job.poll() is None, job.stdout.read()[-5000:]
            assert time.monotonic() < deadline, "training never reached step 4"
            time.sleep(0.5)
        stop_file(out).touch()
        text, _ = job.communicate(timeout=600)
    finally:
        job.kill()
    assert job.returncode == 0, text[-5000:]
    assert "stop requested: saving checkpoint-4" in text and "checkpoint-4 saved: exiting on the stop request" in text
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-4"]
    assert (out / "checkpoint-4" / "trainer_state.json").is_file()
    assert not stop_file(out).exists()  # the request is consumed
    assert not (out / weights_file).exists()  # the unfinished run wrote no final model
    assert sorted(loss_history(out / "checkpoint-4")) == [1, 2, 3, 4]
    result = launch(hooked_dir("videorope"), demo_dataset_dir, out, processes, overrides)
    assert result.returncode == 0, result.stderr[-5000:]
    assert "checkpoint-4" in result.stderr + result.stdout
    assert loss_history(out) == pytest.approx(loss_history(reference), abs=1e-6)
    assert sorted(loss_history(out)) == list(range(1, 7))
    want, got = load_file(reference / weights_file), load_file(out / weights_file)
    assert max((want[k].float() - got[k].float()).abs().max().item() for k in want) <= 1e-6


def test_checkpoint_that_does_not_load_is_refused(hooked_dir, demo_dataset_dir, tmp_path, uninterrupted):
    """Weights that do not all load stop the run before training, and nothing in the output dir is overwritten."""
    model_dir = hooked_dir("videorope")
    reference = uninterrupted("full, no DeepSpeed")
    broken = stopped_after(reference, 3, tmp_path / "broken")
    weights = load_file(broken / "checkpoint-3" / "model.safetensors")
    from safetensors.torch import save_file

    dropped = sorted(weights)[0]
    save_file({k: v for k, v in weights.items() if k != dropped}, broken / "checkpoint-3" / "model.safetensors",
              metadata={"format": "pt"})
    before = {p.relative_to(broken): p.read_bytes() for p in broken.rglob("*") if p.is_file()}
    result = launch(model_dir, demo_dataset_dir, broken, 1, [])
    assert result.returncode != 0
    assert "checkpoint weights do not match" in result.stderr and "1 of its weights missing" in result.stderr
    for path, content in before.items():  # nothing there was overwritten or removed
        assert (broken / path).read_bytes() == content, path
    assert not (broken / "model.safetensors").exists()


def test_job_killed_mid_save_resumes_from_the_last_complete_checkpoint(hooked_dir, demo_dataset_dir, tmp_path,
                                                                        uninterrupted):
    """checkpoint-6 (the last) half-written when the job dies: the launcher sets it aside (kept), resumes from
    checkpoint-3, and with save_total_limit=1 no complete checkpoint is lost to a half-written one; the run ends
    equal to the uninterrupted one (the limit changes which checkpoints stay, not the training)."""
    from conftest import SITE

    model_dir = hooked_dir("videorope")
    limit = ["save_total_limit=1"]
    reference = uninterrupted("full, no DeepSpeed")
    out = tmp_path / "killed"
    died = launch(model_dir, demo_dataset_dir, out, 1, limit,
                  extra_env={"PYTHONPATH": SITE, "VIDEOROPE_DIE_SAVING_STEP": "6"})
    assert died.returncode != 0, died.stderr[-3000:]
    assert (out / "checkpoint-6").is_dir(), died.stderr[-5000:]
    assert (out / "checkpoint-3" / "trainer_state.json").is_file()
    assert (out / "checkpoint-6").is_dir() and not (out / "checkpoint-6" / "trainer_state.json").exists()
    result = launch(model_dir, demo_dataset_dir, out, 1, limit)
    assert result.returncode == 0, result.stderr[-5000:]
    assert "checkpoint-6 is half-written (a job died saving it): set aside as incomplete-checkpoint-6-" in result.stderr
    assert len(list(out.glob("incomplete-checkpoint-6-*"))) == 1  # kept for inspection, never deleted
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-6"]  # the limit rotated complete ones
    assert loss_history(out) == pytest.approx(loss_history(reference), abs=1e-6)
    want, got = load_file(reference / "model.safetensors"), load_file(out / "model.safetensors")
    assert max((want[k] - got[k]).abs().max().item() for k in want) <= 1e-6


def test_resume_with_other_rope_settings_is_refused(hooked_dir, uninterrupted):
    from videorope_train.launch import launch_plan

    reference = uninterrupted("full, no DeepSpeed")
    with pytest.raises(ValueError, match="was trained with .*temporal_stride=2.0.* but model_name_or_path"):
        launch_plan(REPO / "recipes" / "tiny_cpu_sft.yaml", 1, 1, overrides=[
            f"model_name_or_path={hooked_dir('videorope', temporal_stride=3.0)}", f"output_dir={reference}"])


def test_restarted_job_continues_the_same_wandb_run(hooked_dir, demo_dataset_dir, tmp_path):
    """One W&B run per training run: the job that dies and the job that resumes it write to one run id (offline
    run files read back), and the resumed job's curve picks up after the checkpoint."""
    from conftest import SITE
    from wandb_records import summarise

    out = tmp_path / "out"
    wandb = {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_PROJECT": "videorope-test"}
    died = launch(hooked_dir("videorope"), demo_dataset_dir, out, 1, ["report_to=wandb"],
                  extra_env={**wandb, "PYTHONPATH": SITE, "VIDEOROPE_DIE_SAVING_STEP": "6"})
    assert died.returncode != 0
    result = launch(hooked_dir("videorope"), demo_dataset_dir, out, 1, ["report_to=wandb"], extra_env=wandb)
    assert result.returncode == 0, result.stderr[-4000:]
    runs = sorted(tmp_path.glob("wandb/offline-run-*"))  # the killed job's and the resumed job's
    assert len(runs) == 2
    # (the killed job's own file holds nothing: os._exit left W&B no time to flush; online, it had streamed)
    run_ids = {path.name.rsplit("-", 2)[-2] + "-" + path.name.rsplit("-", 1)[-1] for path in runs}
    second, config, history = summarise(next(runs[1].glob("run-*.wandb")))
    assert run_ids == {second.run_id} and second.run_id.startswith("vr-")
    steps = [int(json.loads(h["train/global_step"])) for h in history if "train/loss" in h]
    assert steps == [4, 5, 6]  # the curve continues after checkpoint-3
    losses = [float(json.loads(h["train/loss"])) for h in history if "train/loss" in h]
    assert all(loss > 0 for loss in losses)
    # what the launcher names the run (read back from the run file): variant, δ, frames, context
    assert second.display_name.endswith("-videorope-d2-8f-1k") and second.run_group.endswith("-8f-1k")
    assert {"videorope", "d2", "8f"} <= set(second.tags) and second.project == "videorope-test"
    assert json.loads(config["videorope"])["variant"] == "videorope"


def test_relaunching_a_finished_run_trains_nothing(hooked_dir, demo_dataset_dir, tmp_path, uninterrupted):
    """A requeued / resubmitted job whose run already ended must not resume from the final checkpoint (the Trainer
    would train a step past max_steps and overwrite the final weights)."""
    out = tmp_path / "done"
    shutil.copytree(uninterrupted("full, no DeepSpeed"), out)  # a finished run, as the job left it
    final = (out / "model.safetensors").read_bytes()
    again = launch(hooked_dir("videorope"), demo_dataset_dir, out, 1, [])
    assert again.returncode == 0, again.stderr[-3000:]
    assert "checkpoint-6 already reached max_steps: nothing to train" in again.stderr
    assert (out / "model.safetensors").read_bytes() == final and not (out / "checkpoint-7").exists()
