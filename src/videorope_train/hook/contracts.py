"""The stock transformers code the hook copies or overrides, fingerprinted so a transformers upgrade that changes any
of it fails a named test (tests/test_contracts.py) instead of drifting silently.

``fingerprints()`` gives, for each stock function or method: its signature and a hash of its source.  The pinned
values per supported release live in ``tests/contracts/transformers-<version>.json``; refresh them with
``python -m videorope_train.hook.contracts > tests/contracts/transformers-$(python -c 'import transformers;
print(transformers.__version__)').json`` only after reading what changed and adapting the hook.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json

# module: [qualified names]; why each matters is noted
STOCK = {
    "transformers.models.qwen2_vl.modeling_qwen2_vl": [
        "Qwen2VLAttention.forward",  # copied into PlainRotaryAttentionMixin.forward (rotary swapped)
        "VisionAttention.forward",  # wrapped (attention_call_kwargs)
        "Qwen2VLModel.forward",  # called with normalised positions and varlen kwargs
        "Qwen2VLModel.get_rope_index",  # overridden: same signature
        "Qwen2VLModel.compute_3d_position_ids",  # overridden
        "Qwen2VLModel.get_image_features",  # called once for images and videos together; overridden (one pass)
        "Qwen2VLModel.get_video_features",  # overridden: the joint pass's video part
        "Qwen2VLModel.get_placeholder_mask",  # called
        "Qwen2VLTextModel.forward",  # splits the [text; t; h; w] rows; hands kwargs to every layer
        "Qwen2VLForConditionalGeneration.prepare_inputs_for_generation",  # overridden
        "Qwen2VLForConditionalGeneration._prepare_position_ids_for_generation",  # overridden
        "Qwen2VLForConditionalGeneration._expand_inputs_for_generation",  # wrapped
        "Qwen2VLForConditionalGeneration.__init__",  # replaced (the hooked model inside)
    ],
    "transformers.models.qwen2_5_vl.modeling_qwen2_5_vl": [
        "Qwen2_5_VLAttention.forward",
        "Qwen2_5_VLVisionAttention.forward",
        "Qwen2_5_VLModel.forward",
        "Qwen2_5_VLModel.get_rope_index",
        "Qwen2_5_VLModel.compute_3d_position_ids",
        "Qwen2_5_VLModel.get_image_features",
        "Qwen2_5_VLModel.get_video_features",
        "Qwen2_5_VLModel.get_placeholder_mask",
        "Qwen2_5_VLTextModel.forward",
        "Qwen2_5_VLForConditionalGeneration.prepare_inputs_for_generation",
        "Qwen2_5_VLForConditionalGeneration._prepare_position_ids_for_generation",
        "Qwen2_5_VLForConditionalGeneration._expand_inputs_for_generation",
        "Qwen2_5_VLForConditionalGeneration.__init__",
    ],
    "transformers.models.qwen3_vl.modeling_qwen3_vl": [
        "apply_rotary_pos_emb",  # plain 1-D rotary of per-channel cos/sin: why stock attention can stay
        "Qwen3VLTextAttention.forward",  # wrapped (attention_call_kwargs; no position_ids with varlen kwargs)
        "Qwen3VLTextDecoderLayer.forward",  # hands position_ids and kwargs to attention
        "Qwen3VLVisionAttention.forward",  # wrapped
        "Qwen3VLTextModel.forward",  # splits the [text; t; h; w] rows; calls rotary_emb once; deepstack
        "Qwen3VLTextModel._deepstack_process",  # adds the (split) deepstack features
        "Qwen3VLModel.forward",  # called with normalised positions; takes features from get_*_features
        "Qwen3VLModel.get_rope_index",  # overridden: same signature
        "Qwen3VLModel.compute_3d_position_ids",  # overridden
        "Qwen3VLModel.get_image_features",  # called once for images and videos together; overridden (one pass)
        "Qwen3VLModel.get_video_features",  # overridden: the joint pass's video part
        "Qwen3VLModel.get_placeholder_mask",  # called
        "Qwen3VLForConditionalGeneration.prepare_inputs_for_generation",  # overridden
        "Qwen3VLForConditionalGeneration._prepare_position_ids_for_generation",  # overridden
        "Qwen3VLForConditionalGeneration._expand_inputs_for_generation",  # wrapped
        "Qwen3VLForConditionalGeneration.__init__",  # replaced (the hooked model inside)
    ],
    "transformers.models.qwen3_vl_moe.modeling_qwen3_vl_moe": [
        "apply_rotary_pos_emb",
        "Qwen3VLMoeTextAttention.forward",
        "Qwen3VLMoeTextDecoderLayer.forward",
        "Qwen3VLMoeVisionAttention.forward",
        "Qwen3VLMoeTextModel.forward",
        "Qwen3VLMoeTextModel._deepstack_process",
        "Qwen3VLMoeModel.forward",
        "Qwen3VLMoeModel.get_rope_index",
        "Qwen3VLMoeModel.compute_3d_position_ids",
        "Qwen3VLMoeModel.get_image_features",
        "Qwen3VLMoeModel.get_video_features",
        "Qwen3VLMoeModel.get_placeholder_mask",
        "Qwen3VLMoeForConditionalGeneration.prepare_inputs_for_generation",
        "Qwen3VLMoeForConditionalGeneration._prepare_position_ids_for_generation",
        "Qwen3VLMoeForConditionalGeneration._expand_inputs_for_generation",
        "Qwen3VLMoeForConditionalGeneration.__init__",
    ],
    "transformers.integrations.flash_attention": ["flash_attention_forward"],  # the s_aux guard (compat.py)
    "transformers.modeling_flash_attention_utils": ["_flash_attention_forward"],  # varlen kwargs, position_ids
    "transformers.core_model_loading": ["rename_source_key"],  # Hub-layout keys on resume (compat.py)
}


def _resolve(module, qualname):
    target = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target


def fingerprints() -> dict[str, dict[str, str]]:
    """{"module:qualname": {"signature": ..., "source_sha256": ...}} of the installed transformers."""
    out = {}
    for module, names in STOCK.items():
        for name in names:
            function = _resolve(module, name)
            source = inspect.getsource(function)
            out[f"{module}:{name}"] = {
                "signature": str(inspect.signature(function)),
                "source_sha256": hashlib.sha256(source.encode()).hexdigest(),
            }
    return out


if __name__ == "__main__":
    print(json.dumps(fingerprints(), indent=2, sort_keys=True))
