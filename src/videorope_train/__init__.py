"""videorope-train: VideoRoPE / VideoRoPE++ for LLaMA-Factory's Qwen2-VL fine-tuning."""

__version__ = "0.1.0"
