"""A small synthetic V-NIAH set: an mp4 haystack, needle images with questions, and V-NIAH-D distractors.

Layout written to ``OUT`` (the same as a published set laid out for ``--needles``/``--haystack``)::

    OUT/haystack.mp4                      PyAV/H.264, a coloured square moving over noise
    OUT/needles.json                      [{"image", "question", "answer", "distractor"}, ...]
    OUT/needles/NAME.png                  the needle: a coloured square on white
    OUT/needles/NAME_interrupt.png        its distractor: a circle of another colour on white (VideoRoPE names
                                          distractors ``<needle>_interrupt.png``)

A random model does not answer these; the set exercises the harness end to end, not a model's skill.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Tuple

import numpy as np

COLOURS = [("Red", (220, 30, 30)), ("Green", (30, 180, 60)), ("Blue", (30, 60, 220)), ("Yellow", (235, 210, 30))]
QUESTION = (
    "\nFind the frame with a coloured square on a white background. What colour is the square?\n"
    "Answer the question using a single word or phrase."
)


def _shape_image(size: Tuple[int, int], colour, shape: str) -> np.ndarray:
    height, width = size
    image = np.full((height, width, 3), 255, dtype=np.uint8)
    rows, cols = np.mgrid[0:height, 0:width]
    cy, cx, radius = height / 2, width / 2, min(height, width) / 3
    if shape == "square":
        inside = (abs(rows - cy) <= radius) & (abs(cols - cx) <= radius)
    else:
        inside = (rows - cy) ** 2 + (cols - cx) ** 2 <= radius**2
    image[inside] = colour
    return image


def make_vniah_data(
    out: str | Path,
    frames: int = 48,
    size: Tuple[int, int] = (112, 112),
    fps: int = 8,
    num_needles: int = 3,
    seed: int = 0,
) -> Path:
    """Write the synthetic set to ``out``; returns the needles JSON path (the haystack is ``out/haystack.mp4``)."""
    from PIL import Image

    from ..data.demo import write_video

    if not 1 <= num_needles <= len(COLOURS):
        raise ValueError(f"num_needles must be 1..{len(COLOURS)}, got {num_needles}")
    out = Path(out)
    (out / "needles").mkdir(parents=True, exist_ok=True)
    height, width = size
    write_video(out / "haystack.mp4", frames, width, height, fps=fps, seed=seed)
    records = []
    for index in range(num_needles):
        answer, colour = COLOURS[index]
        other = COLOURS[(index + 1) % len(COLOURS)][1]
        name = f"square_{answer.lower()}"
        Image.fromarray(_shape_image(size, colour, "square")).save(out / "needles" / f"{name}.png")
        Image.fromarray(_shape_image(size, other, "circle")).save(out / "needles" / f"{name}_interrupt.png")
        records.append(
            {
                "image": f"needles/{name}.png",
                "question": QUESTION,
                "answer": answer,
                "distractor": f"needles/{name}_interrupt.png",
            }
        )
    path = out / "needles.json"
    path.write_text(json.dumps(records, indent=1) + "\n")
    return path


SHAPES = ("square", "circle")


def make_vruler_data(out: str | Path, frames: int = 48, size: Tuple[int, int] = (112, 112), seed: int = 0) -> dict:
    """A synthetic V-RULER set in the authors' record format (``{"path", "prompt", "answer"}``, ``interrupt_path``
    for V-NIAH-D; mkmv's ``path`` a string holding a list, as theirs): ``OUT/haystack.mp4``, ``OUT/images/*.png``,
    ``OUT/{mkmv,counting,ordering,vniah_d}.json``; and for the lengthy multimodal stack ``OUT/stack.json``
    (LongVideoBench records) over ``OUT/videos/clip.mp4``. Returns {subtask: records path}."""
    from PIL import Image

    from ..data.demo import write_video

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    height, width = size
    write_video(out / "haystack.mp4", frames, width, height, fps=8, seed=seed)
    names = {}
    for colour, rgb in COLOURS:
        for shape in SHAPES:
            name = f"{shape}_{colour.lower()}.png"
            Image.fromarray(_shape_image(size, rgb, shape)).save(out / "images" / name)
            names[(colour, shape)] = name
    letters = "ABCD"
    options = lambda choices: "".join(f"\n{letters[k]}. {c}" for k, c in enumerate(choices))  # noqa: E731
    tail = "\nAnswer with the option's letter from the given choices directly."
    records = {
        "mkmv": [{"path": repr([names[("Red", "square")], names[("Blue", "circle")], names[("Green", "square")]]),
                  "prompt": "Find the frames with a red square. Which shapes follow it?" + options(
                      ["blue circle, green square", "green circle", "yellow square", "red circle"]) + tail,
                  "answer": "A"}],
        "counting": [{"path": [names[("Yellow", "circle")], names[("Yellow", "circle")]],
                      "prompt": "How many times does a yellow circle appear in the video?" + options(
                          ["1", "2", "3", "0"]) + tail, "answer": "B"},
                     {"path": [], "prompt": "How many times does a red square appear in the video?" + options(
                         ["1", "2", "3", "0"]) + tail, "answer": "D"}],
        "ordering": [{"path": [names[("Green", "circle")], names[("Red", "circle")]],
                      "prompt": "In which order do a red circle and a green circle appear?" + options(
                          ["red, green", "green, red"]) + tail, "answer": "B"}],
        "vniah_d": [{"path": names[("Blue", "square")], "interrupt_path": names[("Blue", "circle")],
                     "prompt": "\nFind the frame with a blue square. What colour is the square?\n"
                               "Answer the question using a single word or phrase.", "answer": "Blue"}],
    }
    write_video(out / "videos" / "clip.mp4", 4, width, height, fps=2, seed=seed + 1)  # the stacked video
    records["stack"] = [  # LongVideoBench's record format, as the authors' lengthy_multimodal_stack.json
        {"video_path": "clip.mp4", "question": "What moves across the video?",
         "candidates": ["a coloured square", "a dog", "nothing", "a car"], "correct_choice": 0},
        {"video_path": "clip.mp4", "question": "What is behind the square?",
         "candidates": ["a wall", "noise", "the sky"], "correct_choice": 1},
    ]
    paths = {}
    for subtask, recs in records.items():
        path = out / f"{subtask}.json"
        path.write_text(json.dumps(recs, indent=1) + "\n")
        paths[subtask.replace("_", "-")] = path
    return paths
