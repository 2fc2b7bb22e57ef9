"""Small real videos (PyAV-encoded mp4) and sharegpt JSON in LLaMA-Factory's `mllm_video_demo` format.

The samples mix videos of several lengths and aspect ratios, images and text-only turns, so one batch can
hold all three kinds (the case the authors' position builder crashes on).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

DEMO_FILE = "videorope_demo.json"
MEDIA_SUBDIR = "videorope_demo"


def write_video(path: Path, frames: int, width: int, height: int, fps: int = 4, seed: int = 0) -> Path:
    """An H.264 mp4 of a coloured square moving over noise; frame count and size as asked."""
    import av

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        background = rng.integers(0, 80, size=(height, width, 3), dtype=np.uint8)
        colour = rng.integers(120, 255, size=3, dtype=np.uint8)
        side = max(4, min(width, height) // 4)
        for index in range(frames):
            image = background.copy()
            x = int((width - side) * index / max(frames - 1, 1))
            y = (height - side) // 2
            image[y : y + side, x : x + side] = colour
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_image(path: Path, width: int, height: int, seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)).save(path)
    return path


def make_demo_data(dataset_dir: str | Path, num_videos: int = 6) -> Path:
    """Write media under ``dataset_dir/videorope_demo/`` and ``dataset_dir/videorope_demo.json``.

    The JSON's media paths are relative to ``dataset_dir`` (LLaMA-Factory's default ``media_dir``).
    Returns the JSON path; ``data/dataset_info.json`` registers it as ``videorope_demo``.
    """
    dataset_dir = Path(dataset_dir)
    shapes = [(16, 96, 64), (12, 64, 96), (8, 80, 80), (20, 112, 56), (10, 64, 64), (6, 96, 96)]
    samples = []
    for index in range(num_videos):
        frames, width, height = shapes[index % len(shapes)]
        name = f"{MEDIA_SUBDIR}/clip_{index}.mp4"
        write_video(dataset_dir / name, frames, width, height, seed=index)
        samples.append(
            {
                "messages": [
                    {"role": "user", "content": "<video>Where does the square move?"},
                    {"role": "assistant", "content": f"It moves from left to right, clip {index}."},
                ],
                "videos": [name],
            }
        )
    for index in range(2):
        name = f"{MEDIA_SUBDIR}/image_{index}.png"
        write_image(dataset_dir / name, 84, 56, seed=100 + index)
        samples.append(
            {
                "messages": [
                    {"role": "user", "content": "<image>Describe the image."},
                    {"role": "assistant", "content": "Coloured noise."},
                ],
                "images": [name],
            }
        )
    samples.append(
        {"messages": [{"role": "user", "content": "Say hello."}, {"role": "assistant", "content": "Hello."}]}
    )
    path = dataset_dir / DEMO_FILE
    path.write_text(json.dumps(samples, indent=1) + "\n")
    return path
