"""Qwen2-VL and Qwen3-VL video processors applying the authors' per-video pixel budget (``video.VideoBudget``).

LLaMA-Factory samples the frames (``video_fps``, ``video_maxlen``) and hands them to the processor's video
processor; this one resizes each video by its own limit, min(max_frame_pixels, 2·total_pixels/frames).  It
is the remote code of a model prepared with ``--video-budget``, so it takes effect through the unforked CLI.

Its ``size`` is None on purpose: LLaMA-Factory 0.9.5 predicts a video's grid from ``video_processor.size``
(one fixed limit for all videos) to count tokens without decoding, and falls back to decoding through this
processor when there is no ``size`` — the only way its token counts match per-video limits.  The cost: data
preprocessing decodes every video once (LLaMA-Factory caches the tokenized dataset with ``tokenized_path``).
"""

from __future__ import annotations

import torch
from transformers import BatchFeature
from transformers.image_utils import SizeDict
from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor
from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

from ..video import VideoBudget


class VideoBudgetMixin:
    """Over a stock Qwen video processor whose ``_preprocess`` resizes within ``size`` and returns
    ``pixel_values_videos`` and ``video_grid_thw``.  Qwen2-VL's ``size`` bounds one frame's pixels; Qwen3-VL's
    bounds the whole video's (frames rounded up to whole temporal patches × frame pixels), so the per-frame limit
    is multiplied by that frame count there (``size_counts_frames``)."""

    size_counts_frames = False

    def __init__(self, video_budget: dict | None = None, **kwargs):
        super().__init__(**kwargs)
        self.video_budget = VideoBudget(**(video_budget or {})).to_dict()
        self.size = None  # see the module docstring

    def _standardize_kwargs(self, size=None, **kwargs):
        if size is None:  # the per-video limits are applied in _preprocess; this only satisfies validation
            budget = VideoBudget(**self.video_budget)
            size = SizeDict(shortest_edge=budget.min_frame_pixels, longest_edge=budget.max_frame_pixels)
        return super()._standardize_kwargs(size=size, **kwargs)

    def _preprocess(self, videos, size, return_tensors=None, **kwargs):
        budget = VideoBudget(**self.video_budget)
        outputs = []
        for video in videos:  # [T, C, H, W]: each video by its own frame count
            frames = video.shape[0]
            limit = budget.frame_max_pixels(frames)
            scale = -(-frames // self.temporal_patch_size) * self.temporal_patch_size if self.size_counts_frames else 1
            video_size = SizeDict(shortest_edge=min(budget.min_frame_pixels, limit) * scale, longest_edge=limit * scale)
            outputs.append(super()._preprocess([video], size=video_size, return_tensors=None, **kwargs))
        return BatchFeature(
            data={
                "pixel_values_videos": torch.cat([o["pixel_values_videos"] for o in outputs], dim=0),
                "video_grid_thw": torch.cat([torch.as_tensor(o["video_grid_thw"]) for o in outputs], dim=0),
            },
            tensor_type=return_tensors,
        )


class VideoRopeVideoProcessor(VideoBudgetMixin, Qwen2VLVideoProcessor):
    """Qwen2-VL and Qwen2.5-VL."""


class VideoRopeQwen3VLVideoProcessor(VideoBudgetMixin, Qwen3VLVideoProcessor):
    """Qwen3-VL (its timestamps come from the processor's video metadata, which this does not change)."""

    size_counts_frames = True
