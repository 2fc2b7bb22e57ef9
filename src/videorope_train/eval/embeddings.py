"""Vision-tower embeddings of frames and images, computed once and cached on disk (V-NIAH, V-RULER)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Optional, Tuple

import torch

from ..files import atomic_output
from .model import LoadedModel


def vision_fingerprint(model: torch.nn.Module) -> str:
    """A cheap identity of the vision tower's weights (names, shapes and a strided sample of every tensor):
    checkpoints trained with a frozen tower share it, so they share cached embeddings."""
    digest = hashlib.sha1()
    for name, tensor in model.model.visual.state_dict().items():
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // 64)
        sample = flat[::step][:64].float().cpu()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}:".encode())
        digest.update(sample.numpy().tobytes())
        digest.update(f"{float(flat.float().sum()):.6e}".encode())
    return digest.hexdigest()


@torch.inference_mode()
def encode_frames(lm: LoadedModel, frames, frame_size: Tuple[int, int], batch: int = 32,
                  progress: Optional[Callable[[int], None]] = None) -> torch.Tensor:
    """Vision-tower embeddings [n, tokens_per_frame, D·(1 + K)] (CPU, model dtype) of uint8 frames [n, H, W, 3].

    Each frame is one image (T = 1) at exactly ``frame_size`` through the checkpoint's image processor and
    ``get_image_features`` — what the model's own image path computes for it.  A token's row is the tower's output
    (D, the language model's width) followed by its K deepstack features (Qwen3-VL: what the first K language layers
    add at that token; K = 0 for Qwen2-VL), so a frame is moved about, spliced and cached as one tensor whatever the
    family (``spliced.split_deepstack`` separates them).
    """
    grid_h, grid_w, tokens = lm.patch_grid(frame_size)
    height, width = frame_size
    processor = lm.processor.image_processor
    outputs = []
    for start in range(0, len(frames), batch):
        chunk = [frames[k] for k in range(start, min(start + batch, len(frames)))]
        inputs = processor(images=chunk, min_pixels=height * width, max_pixels=height * width, return_tensors="pt")
        grid = inputs["image_grid_thw"]
        if not bool((grid == torch.tensor([1, grid_h, grid_w])).all()):
            raise ValueError(f"the image processor resized {height}x{width} frames to grid {grid[0].tolist()}")
        device = lm.vision_device
        pixels = inputs["pixel_values"].to(device)
        output = lm.model.model.get_image_features(pixels, image_grid_thw=grid.to(device))
        rows = torch.cat([torch.cat(list(output.pooler_output)), *(getattr(output, "deepstack_features", None) or [])],
                         dim=-1)
        outputs.append(rows.reshape(len(chunk), tokens, -1).cpu())
        if progress is not None:
            progress(len(chunk))
    return torch.cat(outputs)


def cached(path: Path, compute: Callable[[], dict]) -> dict:
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=True)
    value = compute()
    with atomic_output(path) as temporary:
        torch.save(value, temporary)
    return value


def cache_key(**parts) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]
