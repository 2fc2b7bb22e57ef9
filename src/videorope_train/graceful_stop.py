"""The stop protocol: how a job asks training to checkpoint at the next optimizer step and exit.

A job that is about to lose its allocation (Slurm time limit, preemption, a requeue by hand) asks training to stop
by creating ``<output_dir>/videorope-stop-requested`` (scripts/slurm/train.sbatch does it when Slurm sends the
batch shell ``--signal=B:USR1@<seconds>``; a user can ``touch`` it by hand).  The training side is
``stop_callback.StopOnRequestCallback``, named in ``report_to`` as ``videorope_stop`` (the launchers add it);
the launchers read the file's name here.  Light on purpose (no transformers): ``launch-plan`` imports it.
"""

from __future__ import annotations

from pathlib import Path

STOP_FILE = "videorope-stop-requested"
STOP_REPORT_TO = "videorope_stop"  # the report_to name of stop_callback.StopOnRequestCallback


def stop_file(output_dir: str | Path) -> Path:
    """The file whose appearance asks the run writing to ``output_dir`` to stop."""
    return Path(output_dir) / STOP_FILE
