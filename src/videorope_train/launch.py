"""What a launcher adds to a recipe: gradient accumulation for the node count, resumption, W&B identity.

`videorope-train launch-plan RECIPE --nodes N --gpus-per-node G [--global-batch B]` prints shell lines that
`scripts/slurm/train.sbatch` and `scripts/train_local.sh` evaluate; it first checks that the node can run the
recipe's attention (``preflight.py``), so a misconfigured node stops before training and writes nothing.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Iterable, Optional

import yaml

from .rope import RopeConfig


def load_recipe(path: str | Path, overrides: Iterable[str] = ()) -> dict:
    """The recipe's keys with ``key=value`` overrides applied (values parsed as YAML scalars)."""
    args = yaml.safe_load(Path(path).read_text())
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not key=value")
        args[key] = yaml.safe_load(value)
    return args


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
    block = json.loads(config_path.read_text()).get("videorope")
    if block is None:
        raise ValueError(f"{model_dir} is not a hooked model (no 'videorope' block in config.json)")
    rope = RopeConfig.from_dict(block)
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


def last_checkpoint(output_dir: str | Path) -> Optional[Path]:
    """The newest complete ``checkpoint-N`` directory (one with trainer_state.json), if any."""
    candidates = []
    for path in Path(output_dir).glob("checkpoint-*"):
        suffix = path.name.split("-", 1)[1]
        if suffix.isdigit() and (path / "trainer_state.json").is_file():
            candidates.append((int(suffix), path))
    return max(candidates)[1] if candidates else None


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
    if "run_name" not in overridden:
        extra.append(f"run_name={identity['name']}")
    checkpoint = last_checkpoint(args["output_dir"])
    if checkpoint is not None:
        extra.append(f"resume_from_checkpoint={checkpoint}")
    return {"overrides": overrides + extra, "identity": identity, "resume": checkpoint}


def shell_lines(plan: dict) -> str:
    identity = plan["identity"]
    lines = [
        f"export WANDB_RUN_GROUP={shlex.quote(identity['group'])}",
        f"export WANDB_TAGS={shlex.quote(','.join(identity['tags']))}",
        "export WANDB_PROJECT=${WANDB_PROJECT:-videorope}",
        "LF_OVERRIDES=(" + " ".join(shlex.quote(item) for item in plan["overrides"]) + ")",
    ]
    return "\n".join(lines)
