"""Qwen2-VL with any `RopeConfig`: the classes a hooked model directory's remote code names.

Thin subclasses of transformers' Qwen2-VL classes over the mixins of ``common.py``.
"""

from transformers.models.qwen2_vl import modeling_qwen2_vl as stock
from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLConfig

from .compat import FlashSafeAttentionMixin
from .common import PlainRotaryAttentionMixin, VideoRopeConfigMixin, VideoRopeGenerationMixin, VideoRopeModelMixin


class VideoRopeQwen2VLConfig(VideoRopeConfigMixin, Qwen2VLConfig):
    pass


class VideoRopeQwen2VLAttention(PlainRotaryAttentionMixin, stock.Qwen2VLAttention):
    eager_attention_forward = staticmethod(stock.eager_attention_forward)


class VideoRopeQwen2VLVisionAttention(FlashSafeAttentionMixin, stock.VisionAttention):
    pass


class VideoRopeQwen2VLModel(VideoRopeModelMixin, stock.Qwen2VLModel):
    config_class = VideoRopeQwen2VLConfig
    attention_class = VideoRopeQwen2VLAttention
    vision_attention_class = VideoRopeQwen2VLVisionAttention


class VideoRopeQwen2VLForConditionalGeneration(VideoRopeGenerationMixin, stock.Qwen2VLForConditionalGeneration):
    config_class = VideoRopeQwen2VLConfig
    model_class = VideoRopeQwen2VLModel
    pretrained_class = stock.Qwen2VLPreTrainedModel
