"""Test-only start-up for subprocesses (llamafactory-cli, torchrun ranks) started with tests/site on PYTHONPATH.

Puts tools/torch_flash_attn (the flash_attn package) first on sys.path, then acts on:

FLASH_ATTN_CPU=1              transformers accepts the flash_attn package of tools/torch_flash_attn on CPU
VIDEOROPE_RECORD_POSITIONS=D  the positions the rotary consumes are saved under D (position_recorder.py)
VIDEOROPE_DIE_SAVING_STEP=N   the process dies in the middle of writing checkpoint-N
VIDEOROPE_HOLD_AT_STEP=N      at the end of step N every rank writes <output_dir>/held-at-step-N.<rank> and waits
                              (up to 10 min) for the stop request, so a test stops the run at exactly step N
"""

import os
import sys

# the flash_attn package (torch's FA2 kernels on CUDA, the exact computation elsewhere) ahead of any installed one
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                "tools", "torch_flash_attn"))

if os.environ.get("FLASH_ATTN_CPU") == "1":
    import flash_attn_cpu_device

    flash_attn_cpu_device.install()

if os.environ.get("VIDEOROPE_RECORD_POSITIONS"):
    import position_recorder

    position_recorder.install(os.environ["VIDEOROPE_RECORD_POSITIONS"])

if os.environ.get("VIDEOROPE_DIE_SAVING_STEP"):  # a job killed while writing checkpoint-N (test_resume.py)
    import contextlib
    import sys

    with contextlib.redirect_stdout(sys.stderr):  # DeepSpeed's import banner must not reach a launcher's $(...)
        from transformers import Trainer

    _save_rng_state = Trainer._save_rng_state

    def _die_mid_save(self, output_dir, _step=int(os.environ["VIDEOROPE_DIE_SAVING_STEP"])):
        if self.state.global_step == _step:  # weights and optimizer written; RNG and trainer state not yet
            os._exit(9)
        return _save_rng_state(self, output_dir)

    Trainer._save_rng_state = _die_mid_save

if os.environ.get("VIDEOROPE_HOLD_AT_STEP"):  # stop on request at a known step (test_resume.py, test_slurm.py)
    import contextlib
    import sys
    import time

    with contextlib.redirect_stdout(sys.stderr):
        from videorope_train import graceful_stop, stop_callback

    _on_step_end = stop_callback.StopOnRequestCallback.on_step_end

    def _hold(self, args, state, control, _step=int(os.environ["VIDEOROPE_HOLD_AT_STEP"]), **kwargs):
        if state.global_step == _step:
            rank = os.environ.get("RANK", "0")
            with open(os.path.join(args.output_dir, f"held-at-step-{_step}.{rank}"), "w"):
                pass
            deadline = time.monotonic() + 600
            while not graceful_stop.stop_file(args.output_dir).exists() and time.monotonic() < deadline:
                time.sleep(0.2)
        return _on_step_end(self, args, state, control, **kwargs)

    stop_callback.StopOnRequestCallback.on_step_end = _hold
