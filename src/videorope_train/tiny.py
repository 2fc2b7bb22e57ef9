"""A randomly initialised, tiny Qwen2-VL, Qwen2.5-VL or Qwen3-VL directory built offline (tests, demo, CI).

Same layout as a hub checkpoint: config.json + safetensors, a byte-level BPE tokenizer with every Qwen2-VL
special token (Qwen3-VL uses the same ones) and the Qwen2-VL chat template, and the image / video processors.  Token ids differ from the
real model's (the vocabulary is tiny); the config records them, and everything reads them from there.
"""

from __future__ import annotations

from pathlib import Path

QWEN2_VL_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# Qwen2-VL-Instruct's chat template (what LLaMA-Factory's `qwen2_vl` template renders).
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "The video shows a red ball rolling across a table, then a cat jumps onto the chair.",
    "What happens at the end of the video? Answer with a short sentence.",
    "A person opens the door, walks in, and sits down. The camera pans to the window.",
    "Describe the image. There is a blue square in the middle of a white background.",
    "Question: how many objects appear? Answer: three objects appear in the clip.",
    "You are a helpful assistant. user assistant system",
]


FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")


def build_tokenizer(vocab_size: int = 512):
    """A byte-level BPE tokenizer (transformers' fast tokenizer) with the Qwen2-VL special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(QWEN2_VL_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=QWEN2_VL_SPECIAL_TOKENS[1:],
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
        model_max_length=32768,
        padding_side="right",
    )


def make_tiny_model(
    out: str | Path,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    mrope_section=None,
    rope_theta: float = 1e6,
    seed: int = 0,
    family: str = "qwen2_vl",
) -> Path:
    """Write a random Qwen2-VL (``family="qwen2_vl"``), Qwen2.5-VL (``"qwen2_5_vl"``), Qwen3-VL (``"qwen3_vl"``,
    with deepstack and q/k norms) or Qwen3-VL-MoE (``"qwen3_vl_moe"``: 4 experts, 2 per token), stock and un-hooked,
    to ``out``; returns the path.

    head_dim = hidden_size / num_heads; ``mrope_section`` sums to head_dim / 2 (default: Qwen2-VL's proportions
    (2, 3, 3), Qwen3-VL's time-first (4, 2, 2), as (16, 24, 24) and (24, 20, 20) of the real models).
    """
    import torch
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    qwen25 = family == "qwen2_5_vl"
    if mrope_section is None:
        mrope_section = (4, 2, 2) if family.startswith("qwen3_vl") else (2, 3, 3)

    head_dim = hidden_size // num_heads
    if sum(mrope_section) * 2 != head_dim:
        raise ValueError(f"mrope_section {tuple(mrope_section)} must sum to head_dim/2 = {head_dim // 2}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = build_tokenizer()
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN2_VL_SPECIAL_TOKENS}
    if family.startswith("qwen3_vl"):
        return _make_tiny_qwen3_vl(out, tokenizer, ids, hidden_size, num_layers, num_heads, num_kv_heads,
                                   mrope_section, rope_theta, seed, moe=family == "qwen3_vl_moe")
    pixels = dict(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 64)  # small images → few visual tokens
    image_processor = Qwen2VLImageProcessor(**pixels)
    video_processor = Qwen2VLVideoProcessor(**pixels)
    processor = (Qwen2_5_VLProcessor if qwen25 else Qwen2VLProcessor)(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )

    common_vision = dict(depth=2, num_heads=2, patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
    if qwen25:  # window attention with one full-attention block; out_hidden_size feeds the language model
        vision_config = dict(common_vision, hidden_size=32, intermediate_size=64, out_hidden_size=hidden_size,
                             window_size=112, fullatt_block_indexes=[1], tokens_per_second=2)
    else:
        vision_config = dict(common_vision, embed_dim=32, hidden_size=hidden_size, mlp_ratio=2)
    config = (Qwen2_5_VLConfig if qwen25 else Qwen2VLConfig)(
        text_config=_text_config(tokenizer, ids, hidden_size, num_layers, num_heads, num_kv_heads,
                                 {"rope_type": "default", "mrope_section": list(mrope_section), "rope_theta": rope_theta}),
        vision_config=vision_config,
        **_special_token_ids(ids),
    )
    torch.manual_seed(seed)
    model = (Qwen2_5_VLForConditionalGeneration if qwen25 else Qwen2VLForConditionalGeneration)(config)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def _text_config(tokenizer, ids, hidden_size, num_layers, num_heads, num_kv_heads, rope_parameters) -> dict:
    """The language model's settings every tiny family shares."""
    return dict(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
                num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
                max_position_embeddings=32768, rope_parameters=rope_parameters, bos_token_id=None,
                eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])


def _special_token_ids(ids) -> dict:
    """The top-level config's visual token ids (the tiny vocabulary's), untied embeddings."""
    return dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
                tie_word_embeddings=False)


def _make_tiny_qwen3_vl(out: Path, tokenizer, ids, hidden_size, num_layers, num_heads, num_kv_heads, mrope_section,
                        rope_theta, seed, moe=False) -> Path:
    """Qwen3-VL: 16-pixel patches, a learned position table in the tower, deepstack features from both tower
    blocks into the first two language layers, q/k norms, an explicit head_dim, interleaved M-RoPE; ``moe``: every
    language layer's MLP is 4 experts, 2 per token (Qwen3-VL-MoE)."""
    import torch
    from transformers import (Qwen2VLImageProcessor, Qwen3VLConfig, Qwen3VLForConditionalGeneration,
                              Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration, Qwen3VLProcessor,
                              Qwen3VLVideoProcessor)

    size = {"shortest_edge": 32 * 32 * 4, "longest_edge": 32 * 32 * 64}  # small frames → few visual tokens
    processor = Qwen3VLProcessor(
        # transformers pairs Qwen3-VL with Qwen2-VL's image processor; Qwen3-VL's patch size and normalisation
        image_processor=Qwen2VLImageProcessor(patch_size=16, image_mean=[0.5] * 3, image_std=[0.5] * 3, size=size),
        tokenizer=tokenizer,
        video_processor=Qwen3VLVideoProcessor(size=size),
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )
    experts = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=hidden_size, decoder_sparse_step=1)
    rope = {"rope_type": "default", "rope_theta": rope_theta, "mrope_section": list(mrope_section),
            "mrope_interleaved": True}
    config = (Qwen3VLMoeConfig if moe else Qwen3VLConfig)(
        text_config=dict(_text_config(tokenizer, ids, hidden_size, num_layers, num_heads, num_kv_heads, rope),
                         head_dim=hidden_size // num_heads, **(experts if moe else {})),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=16,
                           spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=hidden_size,
                           num_position_embeddings=64, deepstack_visual_indexes=[0, 1]),
        **_special_token_ids(ids),
    )
    torch.manual_seed(seed)
    (Qwen3VLMoeForConditionalGeneration if moe else Qwen3VLForConditionalGeneration)(config).save_pretrained(out)
    processor.save_pretrained(out)
    return out
