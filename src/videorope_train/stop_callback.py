"""Stop on request: checkpoint at the next optimizer step, on every rank at the same step, then exit.

The protocol (``graceful_stop.py``): a job about to lose its allocation creates ``<output_dir>/videorope-stop-requested``.
At the end of each optimizer step every rank looks for the file and the ranks agree with one all-reduce (on a CPU
gloo group, so no GPU sync): if any rank saw it, all of them save ``checkpoint-<step>`` together, the file is
removed and the processes exit 0.  The launcher then resumes from that checkpoint.  Ranks deciding on their own (a
signal handler and a timer per rank, like transformers' ``enable_jit_checkpoint``) can pick different steps and
hang in mismatched collectives.

LLaMA-Factory's CLI takes no callbacks from a recipe, so the callback is offered to transformers as a reporting
integration: ``report_to: [wandb, videorope_stop]`` (the launchers add it).  ``register()`` adds that one name to
transformers' table of integrations; a prepared model's remote code calls it when the model loads (before
LLaMA-Factory builds its Trainer).  Importing ``videorope_train.hook`` registers nothing.
"""

from __future__ import annotations

import sys

from transformers import TrainerCallback

from .graceful_stop import STOP_REPORT_TO, stop_file


class StopOnRequestCallback(TrainerCallback):
    """Save and exit at the first optimizer step after ``<output_dir>/videorope-stop-requested`` appears."""

    def __init__(self):
        self.group = None
        self.stopping = False

    def on_train_begin(self, args, state, control, **kwargs):
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # every rank calls this, in the same order: a CPU group for the per-step flag
            self.group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else dist.group.WORLD

    def _requested(self, output_dir: str) -> bool:
        seen = stop_file(output_dir).exists()
        if self.group is None:
            return seen
        import torch
        import torch.distributed as dist

        flag = torch.tensor([int(seen)], dtype=torch.int32)  # CPU tensor: gloo, no device synchronisation
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group)
        return bool(flag[0])

    def on_step_end(self, args, state, control, **kwargs):
        if state.max_steps and state.global_step >= state.max_steps:
            return  # the last step: the run ends normally anyway
        if self._requested(args.output_dir):
            self.stopping = True
            control.should_save = True
            control.should_training_stop = True
            if state.is_world_process_zero:
                print(f"[videorope] stop requested: saving checkpoint-{state.global_step}, then exiting "
                      "(the launcher resumes from it)", file=sys.stderr, flush=True)

    def on_save(self, args, state, control, **kwargs):
        if not self.stopping:
            return
        if self.group is not None:
            import torch.distributed as dist

            dist.barrier(group=self.group)  # every rank has written its part of the checkpoint
        if state.is_world_process_zero:
            stop_file(args.output_dir).unlink(missing_ok=True)
            print(f"[videorope] checkpoint-{state.global_step} saved: exiting on the stop request",
                  file=sys.stderr, flush=True)
        # Not LLaMA-Factory's end of training: that would save the unfinished model as the run's final one.
        sys.exit(0)


def register() -> None:
    """Make ``report_to: videorope_stop`` name the callback (transformers builds report_to callbacks by name)."""
    from transformers.integrations import integration_utils

    integration_utils.INTEGRATION_TO_CALLBACK.setdefault(STOP_REPORT_TO, StopOnRequestCallback)
