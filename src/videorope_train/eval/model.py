"""Loading a checkpoint for evaluation (hooked or stock Qwen2-VL / Qwen2.5-VL / Qwen3-VL) and what the harnesses
ask of it: its video geometry, the token layout of a video, its positions."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch

from ..rope import CONFIG_KEY, RopeConfig, get_rope_index
from .video import VideoGeometry

FRAME_BLOCK_TYPES = frozenset({"qwen3_vl", "qwen3_vl_moe"})  # model types whose video is a block per temporal patch after its time


def has_frame_blocks(model_type: str) -> bool:
    """Whether a model type (stock, or config.json's hooked marker such as ``qwen3_vl_videorope``) writes a video as a
    block per temporal patch after its time (Qwen3-VL) rather than one block (Qwen2-VL, Qwen2.5-VL)."""
    return str(model_type).removesuffix(f"_{CONFIG_KEY}") in FRAME_BLOCK_TYPES


@dataclass
class LoadedModel:
    """A Qwen2-VL / Qwen2.5-VL / Qwen3-VL (hooked or stock) with its processor, and what the harness needs to know
    about it."""

    model: torch.nn.Module
    processor: object
    path: str

    @property
    def config(self):
        return self.model.config

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def rope(self) -> RopeConfig:
        """The checkpoint's RoPE settings; a stock (un-hooked) Qwen2-VL is M-RoPE, Qwen3-VL interleaved M-RoPE."""
        rope = getattr(self.model, "rope", None)
        if isinstance(rope, RopeConfig):
            return rope
        return RopeConfig("mrope-interleaved" if self.frame_blocks else "mrope")

    @property
    def hooked(self) -> bool:
        return isinstance(getattr(self.model, "rope", None), RopeConfig)

    @property
    def frame_blocks(self) -> bool:
        """Whether a video is one block per temporal patch, each after its time in text (Qwen3-VL), rather than one
        block for the whole video (Qwen2-VL, Qwen2.5-VL)."""
        return has_frame_blocks(self.config.model_type)

    @property
    def geometry(self) -> VideoGeometry:
        """How this checkpoint's tower and video processor cut a video (``eval/video.py``)."""
        from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

        vision = self.config.vision_config
        return VideoGeometry(factor=vision.patch_size * vision.spatial_merge_size,
                             temporal_patch=vision.temporal_patch_size,
                             whole_video=isinstance(getattr(self.processor, "video_processor", None),
                                                    Qwen3VLVideoProcessor))

    def video_ids(self, tokens_per_patch: int, times: Sequence[float]) -> List[int]:
        """Token ids of a video of ``len(times)`` temporal patches of ``tokens_per_patch`` tokens each, as this
        checkpoint's processor writes it in place of the chat template's ``<|vision_start|><|video_pad|>
        <|vision_end|>``: Qwen2-VL one block, ``<|vision_start|>`` + every patch's pads + ``<|vision_end|>``;
        Qwen3-VL a block per patch, each after its time ``times[k]`` (s) as ``<t.t seconds>`` text."""
        config = self.config
        pads = [config.video_token_id] * tokens_per_patch
        start, end = config.vision_start_token_id, config.vision_end_token_id
        if not self.frame_blocks:
            return [start] + pads * len(times) + [end]
        stamps = [f"<{t:.1f} seconds>" for t in times]
        encoded = dict(zip(dict.fromkeys(stamps), self.tokenizer(list(dict.fromkeys(stamps)),
                                                                 add_special_tokens=False)["input_ids"]))
        ids: List[int] = []
        for stamp in stamps:
            ids += encoded[stamp] + [start] + pads + [end]
        return ids

    @property
    def input_device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def vision_device(self) -> torch.device:
        return next(self.model.model.visual.parameters()).device

    def patch_grid(self, frame_size: Tuple[int, int]) -> Tuple[int, int, int]:
        """(grid_h, grid_w, tokens per frame) of a frame of ``frame_size`` = (H, W) pixels."""
        vision = self.config.vision_config
        factor = vision.patch_size * vision.spatial_merge_size
        height, width = frame_size
        if height % factor or width % factor or height < factor or width < factor:
            raise ValueError(
                f"frame size {height}x{width} must be a positive multiple of patch_size*spatial_merge_size = {factor} "
                f"on both sides ({9 * factor}x{16 * factor} gives 9x16 = 144 tokens per frame)"
            )
        grid_h, grid_w = height // vision.patch_size, width // vision.patch_size
        return grid_h, grid_w, grid_h * grid_w // vision.spatial_merge_size**2

    def positions(self, input_ids, video_grid_thw, attention_mask=None) -> torch.Tensor:
        """[3, B, L] position ids of the checkpoint's own variant (its ``get_rope_index``; stock Qwen2-VL's M-RoPE
        positions from ``rope``, which equal its own)."""
        if self.hooked:
            return self.model.get_rope_index(input_ids, video_grid_thw=video_grid_thw, attention_mask=attention_mask)[0]
        config = self.config
        if self.frame_blocks:  # stock Qwen3-VL: its own, which reads each token's modality from mm_token_type_ids
            types = (input_ids == config.video_token_id).long() * 2 + (input_ids == config.image_token_id).long()
            return self.model.model.get_rope_index(input_ids, types, None, video_grid_thw, attention_mask)[0]
        return get_rope_index(
            RopeConfig("mrope"), input_ids, None, video_grid_thw, attention_mask,
            spatial_merge_size=config.vision_config.spatial_merge_size, image_token_id=config.image_token_id,
            video_token_id=config.video_token_id, vision_start_token_id=config.vision_start_token_id,
        )[0]


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # namespace/name, as the Hub spells a repository


def check_checkpoint(path: str | Path) -> None:
    """A checkpoint that is not there fails here, named, before anything loads (transformers would answer a missing
    directory with "Repo id must be in the form 'repo_name' or 'namespace/repo_name'")."""
    path = Path(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"checkpoint {path} has no config.json: expected a prepared model directory "
                                    f"(videorope-train prepare-model) or a checkpoint-N of a training run")
        return
    if path.exists():
        raise NotADirectoryError(f"checkpoint {path} is a file; expected a model directory")
    if not HUB_ID.match(str(path)) or str(path).startswith((".", "~")):
        raise FileNotFoundError(f"checkpoint directory {path} does not exist")


def load_model(
    path: str | Path,
    dtype: str = "auto",
    device: Optional[str] = None,
    device_map: Optional[str] = None,
    attn_implementation: Optional[str] = None,
    processor: Optional[str] = None,
) -> LoadedModel:
    """Load a (hooked or stock) Qwen2-VL / Qwen2.5-VL / Qwen3-VL directory for evaluation, in eval mode.

    dtype ``auto``: bfloat16 on GPU, float32 on CPU.  ``device_map="auto"`` spreads the layers over every
    visible GPU (weights and KV cache split; see the README for long contexts).  attn_implementation default:
    ``flash_attention_2`` when on GPU and installed, else ``sdpa``.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    check_checkpoint(path)
    if dtype != "auto" and not isinstance(getattr(torch, str(dtype), None), torch.dtype):
        raise ValueError(f"dtype={dtype!r} is not a torch dtype; use auto, bfloat16, float16 or float32")
    device = device or default_device()
    on_gpu = device_map is not None or str(device).startswith("cuda")
    if dtype == "auto":
        torch_dtype = torch.bfloat16 if on_gpu else torch.float32
    else:
        torch_dtype = getattr(torch, dtype)
    if attn_implementation is None:
        attn_implementation = "sdpa"
        if on_gpu:
            try:
                import flash_attn  # noqa: F401

                attn_implementation = "flash_attention_2"
            except ImportError:
                pass
    model = AutoModelForImageTextToText.from_pretrained(
        str(path), trust_remote_code=True, dtype=torch_dtype, attn_implementation=attn_implementation,
        device_map=device_map or device,
    )
    if not hasattr(getattr(model, "model", None), "visual"):
        raise ValueError(f"{path} is not a Qwen-VL model (no vision tower at model.model.visual)")
    model.eval()
    return LoadedModel(model, AutoProcessor.from_pretrained(str(processor or path), trust_remote_code=True), str(path))
