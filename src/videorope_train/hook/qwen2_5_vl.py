"""Qwen2.5-VL with any `RopeConfig`: the classes a hooked model directory's remote code names.

Thin subclasses of transformers' Qwen2.5-VL classes over the mixins of ``common.py``.
"""

from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as stock
from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLConfig

from .compat import FlashSafeAttentionMixin
from .common import PlainRotaryAttentionMixin, VideoRopeConfigMixin, VideoRopeGenerationMixin, VideoRopeModelMixin


class VideoRopeQwen2_5_VLConfig(VideoRopeConfigMixin, Qwen2_5_VLConfig):
    pass


class VideoRopeQwen2_5_VLAttention(PlainRotaryAttentionMixin, stock.Qwen2_5_VLAttention):
    eager_attention_forward = staticmethod(stock.eager_attention_forward)


class VideoRopeQwen2_5_VLVisionAttention(FlashSafeAttentionMixin, stock.Qwen2_5_VLVisionAttention):
    pass


class VideoRopeQwen2_5_VLModel(VideoRopeModelMixin, stock.Qwen2_5_VLModel):
    config_class = VideoRopeQwen2_5_VLConfig
    attention_class = VideoRopeQwen2_5_VLAttention
    stock_rope_index_args = ("second_per_grid_ts", "attention_mask")
    vision_attention_class = VideoRopeQwen2_5_VLVisionAttention


class VideoRopeQwen2_5_VLForConditionalGeneration(VideoRopeGenerationMixin, stock.Qwen2_5_VLForConditionalGeneration):
    config_class = VideoRopeQwen2_5_VLConfig
    model_class = VideoRopeQwen2_5_VLModel
    pretrained_class = stock.Qwen2_5_VLPreTrainedModel
