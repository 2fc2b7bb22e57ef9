"""Qwen3-VL-MoE with any `RopeConfig`: exactly Qwen3-VL's changes (``qwen3_vl.py``) over the MoE classes.

The experts change the MLP only; attention (q/k norms, plain rotary), the interleaved rotary module, the per-frame
video layout, deepstack and generation are Qwen3-VL's (the pinned stock code is the same, tests/contracts/).
"""

from transformers.models.qwen3_vl_moe import modeling_qwen3_vl_moe as stock
from transformers.models.qwen3_vl_moe.configuration_qwen3_vl_moe import Qwen3VLMoeConfig

from .common import VideoRopeConfigMixin, VideoRopeGenerationMixin, VideoRopeModelMixin
from .compat import FlashSafeAttentionMixin
from .qwen3_vl import StockRotaryAttentionMixin


class VideoRopeQwen3VLMoeConfig(VideoRopeConfigMixin, Qwen3VLMoeConfig):
    pass


class VideoRopeQwen3VLMoeTextAttention(StockRotaryAttentionMixin, stock.Qwen3VLMoeTextAttention):
    pass


class VideoRopeQwen3VLMoeVisionAttention(FlashSafeAttentionMixin, stock.Qwen3VLMoeVisionAttention):
    pass


class VideoRopeQwen3VLMoeModel(VideoRopeModelMixin, stock.Qwen3VLMoeModel):
    config_class = VideoRopeQwen3VLMoeConfig
    attention_class = VideoRopeQwen3VLMoeTextAttention
    vision_attention_class = VideoRopeQwen3VLMoeVisionAttention
    frame_blocks = True


class VideoRopeQwen3VLMoeForConditionalGeneration(VideoRopeGenerationMixin, stock.Qwen3VLMoeForConditionalGeneration):
    config_class = VideoRopeQwen3VLMoeConfig
    model_class = VideoRopeQwen3VLMoeModel
    pretrained_class = stock.Qwen3VLMoePreTrainedModel
