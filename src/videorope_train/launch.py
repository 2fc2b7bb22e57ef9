"""What a launcher adds to a recipe: gradient accumulation for the node count, resumption, W&B identity.

`videorope-train launch-plan RECIPE --nodes N --gpus-per-node G [--global-batch B]` prints shell lines that
`scripts/slurm/train.sbatch` and `scripts/train_local.sh` evaluate; it first checks that the node can run the
recipe's attention (``preflight.py``), so a misconfigured node stops before training and writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Iterable, Optional

from .graceful_stop import STOP_REPORT_TO, stop_file
from .recipe import load_recipe
from .rope import CONFIG_KEY, RopeConfig


def _number(value: float) -> str:
    return f"{value:g}"


def run_identity(args: dict) -> dict:
    """W&B name / group / tags from the model's RoPE settings, the frame budget and the context.

    name: ``<model>-<variant>[-d<δ>][-<extrapolation>-s<factor>]-<frames>f-<context>k``, e.g.
    ``qwen2vl7b-videorope-d2-128f-8k``; the group leaves the RoPE out so variants line up side by side.
    """
    model_dir = Path(args["model_name_or_path"])
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: prepare the model first (videorope-train prepare-model)")
    rope = RopeConfig.of_model_dir(model_dir)
    if rope is None:
        raise ValueError(f"{model_dir} is not a hooked model (no '{CONFIG_KEY}' block in config.json)")
    model = model_dir.name.removesuffix(f"-{rope.variant}")
    frames = args.get("video_maxlen", 128)
    context = round(int(args.get("cutoff_len", 2048)) / 1024)
    rope_part = rope.variant + (f"-d{_number(rope.temporal_stride)}" if rope.variant == "videorope" else "")
    if rope.extrapolation:
        rope_part += f"-{rope.extrapolation}-s{_number(rope.extrapolation_factor)}"
    tags = [model, rope.variant, f"{frames}f", f"{context}k"]
    if rope.variant == "videorope":
        tags.append(f"d{_number(rope.temporal_stride)}")
    return {
        "name": f"{model}-{rope_part}-{frames}f-{context}k",
        "group": f"{model}-{frames}f-{context}k",
        "tags": tags,
    }


def gradient_accumulation(per_device: int, processes: int, global_batch: int) -> int:
    if global_batch % (per_device * processes):
        raise ValueError(
            f"global batch {global_batch} is not divisible by per_device_train_batch_size {per_device} x "
            f"{processes} processes"
        )
    return global_batch // (per_device * processes)


def _checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    found = []
    for path in Path(output_dir).glob("checkpoint-*"):
        suffix = path.name.split("-", 1)[1]
        if suffix.isdigit() and path.is_dir():
            found.append((int(suffix), path))
    return sorted(found)


def is_complete(checkpoint: Path) -> bool:
    """The Trainer writes trainer_state.json last (after weights, optimizer, scheduler and RNG states)."""
    return (checkpoint / "trainer_state.json").is_file()


def last_checkpoint(output_dir: str | Path) -> Optional[Path]:
    """The newest complete ``checkpoint-N`` directory (one with trainer_state.json), if any."""
    complete = [path for _, path in _checkpoints(output_dir) if is_complete(path)]
    return complete[-1] if complete else None


def set_aside_incomplete(output_dir: str | Path) -> list[tuple[Path, Path]]:
    """Rename checkpoints a killed job left half-written to ``incomplete-checkpoint-N-<time>`` (kept, not deleted),
    so that neither the resume nor the Trainer's ``save_total_limit`` rotation ever takes one for a checkpoint."""
    moved = []
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for _, path in _checkpoints(output_dir):
        if not is_complete(path):
            target = path.with_name(f"incomplete-{path.name}-{stamp}")
            path.rename(target)
            moved.append((path, target))
    return moved


def check_resume_matches_model(checkpoint: Path, model_dir: str | Path) -> None:
    """A checkpoint trained with other RoPE settings (variant, δ, ...) than the model now named is refused."""
    theirs, ours = RopeConfig.of_model_dir(checkpoint), RopeConfig.of_model_dir(model_dir)
    if theirs is None or ours is None:
        return  # adapters-only checkpoints (LoRA) carry no model config
    if theirs != ours:
        raise ValueError(
            f"resume_from_checkpoint {checkpoint} was trained with {theirs}, but model_name_or_path {model_dir} is "
            f"{ours}; resume with the model it was trained from, or start a new output_dir"
        )


def wandb_run_id(output_dir: str | Path) -> str:
    """One W&B run per training run: the id follows the output directory, so a restart continues the run."""
    return "vr-" + hashlib.sha1(str(Path(output_dir).resolve()).encode()).hexdigest()[:16]


def with_stop_callback(report_to) -> list[str]:
    """A recipe's ``report_to`` with the stop callback added (``none``/empty -> only it)."""
    if report_to in (None, "none", ["none"], []):
        names = []
    elif isinstance(report_to, str):
        names = [report_to]
    else:
        names = list(report_to)
    if "all" in names:  # transformers expands "all" only when it stands alone
        from transformers.integrations import get_available_reporting_integrations

        names = get_available_reporting_integrations()
    return names if STOP_REPORT_TO in names else names + [STOP_REPORT_TO]


def launch_plan(recipe: str | Path, nodes: int, gpus_per_node: int, global_batch: Optional[int] = None,
                overrides: Iterable[str] = ()) -> dict:
    if nodes < 1 or gpus_per_node < 1:
        raise ValueError(f"need at least 1 node and 1 process per node, got {nodes} x {gpus_per_node}")
    overrides = list(overrides)
    args = load_recipe(recipe, overrides)
    from .preflight import flash_attention_problem

    problem = flash_attention_problem(args)
    if problem:
        raise ValueError(f"{recipe}: {problem}")
    overridden = {item.partition("=")[0] for item in overrides}
    extra = []
    if global_batch and "gradient_accumulation_steps" not in overridden:  # an explicit override wins
        steps = gradient_accumulation(int(args.get("per_device_train_batch_size", 1)), nodes * gpus_per_node,
                                      global_batch)
        extra.append(f"gradient_accumulation_steps={steps}")
    identity = run_identity(args)
    _check_remote_code(Path(args["model_name_or_path"]))
    if "run_name" not in overridden:
        extra.append(f"run_name={identity['name']}")
    # graceful_stop's callback; the flow-style list is what LLaMA-Factory's override parser reads as a list
    extra.append("report_to=[" + ",".join(with_stop_callback(args.get("report_to"))) + "]")
    stale = stop_file(args["output_dir"])
    if stale.exists():  # the request that stopped the previous job: this one must not stop at its first step
        stale.unlink()
        print(f"[videorope] removed the previous job's {stale.name}", file=sys.stderr)
    for path, target in set_aside_incomplete(args["output_dir"]):
        print(f"[videorope] {path.name} is half-written (a job died saving it): set aside as {target.name}",
              file=sys.stderr)
    checkpoint = args.get("resume_from_checkpoint")
    if checkpoint is None:
        checkpoint = last_checkpoint(args["output_dir"])
        if checkpoint is not None:
            extra.append(f"resume_from_checkpoint={checkpoint}")
    finished = False
    if checkpoint is not None:
        check_resume_matches_model(Path(checkpoint), args["model_name_or_path"])
        finished = _reached_max_steps(Path(checkpoint), args)
    return {"overrides": overrides + extra, "identity": identity, "resume": checkpoint,
            "wandb_run_id": wandb_run_id(args["output_dir"]), "finished": finished,
            "stop_file": str(stop_file(Path(args["output_dir"]).resolve()))}


def _check_remote_code(model_dir: Path) -> None:
    """A model prepared before the remote code registered the stop callback would fail in the Trainer, after the
    model has loaded (transformers rejects an unknown ``report_to`` name): stop here with the fix instead."""
    remote = model_dir / "modeling_videorope.py"
    if remote.is_file() and "stop_callback" not in remote.read_text():
        raise ValueError(
            f"{remote} was written by an older videorope-train: it does not register the stop callback "
            f"({STOP_REPORT_TO}) the launchers add to report_to; re-run `videorope-train prepare-model` with the "
            f"model's --base and --out {model_dir} (it rewrites config and remote code, weights stay linked)"
        )


def _reached_max_steps(checkpoint: Path, args: dict) -> bool:
    """Whether the checkpoint is the end of the run (resuming it would train a step past max_steps)."""
    max_steps = int(args.get("max_steps", -1) or -1)
    state = checkpoint / "trainer_state.json"
    return max_steps > 0 and state.is_file() and json.loads(state.read_text()).get("global_step", 0) >= max_steps


def shell_lines(plan: dict) -> str:
    identity = plan["identity"]
    lines = [
        f"export WANDB_RUN_GROUP={shlex.quote(identity['group'])}",
        f"export WANDB_TAGS={shlex.quote(','.join(identity['tags']))}",
        "export WANDB_PROJECT=${WANDB_PROJECT:-videorope}",
        f"export WANDB_RUN_ID=${{WANDB_RUN_ID:-{plan['wandb_run_id']}}}",  # a restart continues the same W&B run
        "export WANDB_RESUME=${WANDB_RESUME:-allow}",
        f"STOP_FILE={shlex.quote(plan['stop_file'])}",  # create it to checkpoint at the next step and exit
        "LF_OVERRIDES=(" + " ".join(shlex.quote(item) for item in plan["overrides"]) + ")",
    ]
    if plan.get("finished"):  # a requeued or resubmitted job whose run already ended: nothing to train
        message = f"[videorope] {plan['resume']} already reached max_steps: nothing to train"
        lines.append(f"echo {shlex.quote(message)} >&2; exit 0")
    return "\n".join(lines)
