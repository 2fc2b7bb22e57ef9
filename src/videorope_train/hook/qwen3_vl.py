"""Qwen3-VL (dense) with any `RopeConfig`: the classes a hooked model directory's remote code names.

Everything this family changes relative to the hook's Qwen2-VL families, in one place:

- positions: a video is one block per temporal patch, each led by its own ``<|vision_start|>`` and preceded by a
  ``<t seconds>`` timestamp in text, so ``frame_blocks = True`` (``rope/positions.py``; the mapping of every
  variant onto this layout, with worked examples, is in docs/method.md, "Qwen3-VL").  ``mm_token_type_ids`` is
  accepted and not needed: blocks are found from the token ids, as for the other families.
- rotary: stock attention already applies plain 1-D rotary (``apply_rotary_pos_emb``) to per-channel cos/sin
  [B, L, head_dim], after its q/k norms: only ``language_model.rotary_emb`` is replaced, the attention forward is
  stock's (wrapped for the 5.6.0 flash-attention guard only).  The stock-equivalent variant is
  ``mrope-interleaved`` (Qwen3-VL's ``apply_interleaved_mrope``), not ``mrope``.
- deepstack: the one joint vision pass (``VideoRopeModelMixin._one_vision_pass``) splits the tower's deepstack
  features between images and videos as two passes would give them; stock's forward feeds them to the early layers.
- ``head_dim`` is explicit in the config (``rope.head_dim_of`` reads it).
"""

from transformers.models.qwen3_vl import modeling_qwen3_vl as stock
from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLConfig

from .common import VideoRopeConfigMixin, VideoRopeGenerationMixin, VideoRopeModelMixin
from .compat import FlashSafeAttentionMixin


class VideoRopeQwen3VLConfig(VideoRopeConfigMixin, Qwen3VLConfig):
    pass


class StockRotaryAttentionMixin(FlashSafeAttentionMixin):
    """Stock attention that applies plain rotary to the model's cos/sin; with the model's varlen boundaries in the
    kwargs it drops the text positions, so flash-attn does not re-derive the boundaries in every layer."""

    def forward(self, *args, **kwargs):
        if "cu_seq_lens_q" in kwargs:
            kwargs["position_ids"] = None
        return super().forward(*args, **kwargs)


class VideoRopeQwen3VLTextAttention(StockRotaryAttentionMixin, stock.Qwen3VLTextAttention):
    pass


class VideoRopeQwen3VLVisionAttention(FlashSafeAttentionMixin, stock.Qwen3VLVisionAttention):
    pass


class VideoRopeQwen3VLModel(VideoRopeModelMixin, stock.Qwen3VLModel):
    config_class = VideoRopeQwen3VLConfig
    attention_class = VideoRopeQwen3VLTextAttention
    vision_attention_class = VideoRopeQwen3VLVisionAttention
    frame_blocks = True


class VideoRopeQwen3VLForConditionalGeneration(VideoRopeGenerationMixin, stock.Qwen3VLForConditionalGeneration):
    config_class = VideoRopeQwen3VLConfig
    model_class = VideoRopeQwen3VLModel
    pretrained_class = stock.Qwen3VLPreTrainedModel
