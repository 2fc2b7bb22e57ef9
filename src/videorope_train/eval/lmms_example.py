"""The example lmms-eval task ``videorope_tiny_mcq``: four synthetic videos, one multiple-choice question each.

A smoke test of the ``videorope`` backend without the benchmarks' downloads (README: "Trying it on CPU without the
benchmarks"). ``make_lmms_example(DIR)`` writes::

    DIR/videorope_tiny_mcq.yaml, DIR/utils.py   the task, copied from the package (lmms_tiny_task/)
    DIR/docs.jsonl                              {"id", "video", "question", "options", "answer"} per video
    DIR/videos/*.mp4                            PyAV/H.264, a coloured square moving over noise

The YAML names ``docs.jsonl`` relative to itself and the documents name their videos relative to ``DIR``, so
``--include_path DIR`` is all lmms-eval needs. The question asks for the video's aspect ratio; on a random tiny
model the answers, and so the accuracy, mean nothing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..data.demo import write_video

TASK = "videorope_tiny_mcq"
TASK_FILES = (f"{TASK}.yaml", "utils.py")
SHIPPED_TASK_DIR = Path(__file__).with_name("lmms_tiny_task")  # package data (pyproject.toml)
QUESTION = "What is the aspect ratio (width:height) of this video?"
# (aspect ratio, width, height, fps, frames): landscape, wide, portrait and panoramic frames, each video of another
# length and frame rate, so the 2-fps sampling and the resizing differ from one to the next
VIDEOS = (("4:3", 112, 84, 4, 12), ("16:9", 128, 72, 8, 32), ("9:16", 72, 128, 6, 30), ("5:2", 140, 56, 2, 12))


def make_lmms_example(out: str | Path) -> Path:
    """Write the task, its videos and its documents to ``out``; returns the task's YAML path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in TASK_FILES:
        shutil.copyfile(SHIPPED_TASK_DIR / name, out / name)
    options = [ratio for ratio, *_ in VIDEOS]
    docs = []
    for index, (ratio, width, height, fps, frames) in enumerate(VIDEOS):
        video = f"videos/{ratio.replace(':', 'x')}.mp4"
        write_video(out / video, frames=frames, width=width, height=height, fps=fps, seed=index)
        docs.append({"id": index, "video": video, "question": QUESTION, "options": options, "answer": "ABCD"[index]})
    (out / "docs.jsonl").write_text("".join(json.dumps(doc) + "\n" for doc in docs))
    return out / TASK_FILES[0]
