"""The hook's family-agnostic parts (Qwen2-VL, Qwen2.5-VL and Qwen3-VL share them): mixins over transformers' classes.

Written against the transformers releases of the support window (``hook/__init__.py`` SUPPORTED); what differs
between them is in ``compat.py``, and the per-family files (`qwen2_vl.py`, `qwen2_5_vl.py`, `qwen3_vl.py`) name the
stock classes each family changes.  What changes against the stock models:

- positions: ``get_rope_index`` / ``compute_3d_position_ids`` come from ``videorope_train.rope``; decoding with
  a KV cache uses p + rope_deltas (TAD: 2·p + rope_deltas) from the prefill of the *same* call;
- rotary: ``language_model.rotary_emb`` gathers the per-channel cos/sin [B, L, head_dim] once per forward,
  and every attention layer applies plain 1-D rotary (no per-layer section split);
- packing: a 4-row ``[text; t; h; w]`` position tensor gets a sequence-local text row, so VideoRoPE's
  jumps are never read as sequence boundaries; with flash attention and no padding mask, the varlen boundaries
  (cu_seqlens, longest sequence) are computed from it once per forward and handed to every layer;
- one vision pass: images and videos of a batch go through the tower in one call (ZeRO-3);
- flash attention: release-specific fixes from ``compat.py`` reach every attention call, vision tower included.

Nothing global is patched: two models with different variants can live in one process.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Optional

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils.generic import is_flash_attention_requested

from .. import __version__
from ..rope import (
    CONFIG_KEY,
    POSITIONS_VERSION,
    PROVENANCE_KEY,
    RopeConfig,
    apply_rotary,
    frequency_axes,
    get_rope_index,
    head_dim_of,
    rotary_cos_sin,
    scaled_inv_freq,
    sequence_local_positions,
    varlen_boundaries,
)
from .compat import attention_call_kwargs, checkpoint_keys_to_module_keys

def hooked_model_type(model_type: str) -> str:
    """The marker config.json carries for a hooked model of stock ``model_type`` (e.g. qwen2_vl_videorope)."""
    return f"{model_type}_{CONFIG_KEY}"


def rope_config_of(config: Any) -> RopeConfig:
    """The ``RopeConfig`` stored in a model config's ``videorope`` block (an error when there is none)."""
    rope = RopeConfig.of_model_config(config)
    if rope is None:
        raise ValueError(
            f"the model config has no '{CONFIG_KEY}' block; prepare the model with "
            f"`videorope-train prepare-model --base DIR --rope VARIANT --out DIR`"
        )
    return rope


def provenance() -> dict:
    """What a config block records about the code that wrote it."""
    return {"videorope_train": __version__, "positions": POSITIONS_VERSION}


def config_block(rope: RopeConfig) -> dict:
    """The ``videorope`` block config.json carries: the settings and who wrote them."""
    return {**rope.to_dict(), PROVENANCE_KEY: provenance()}


def warn_if_positions_changed(block: Any, where: str = "this model") -> None:
    """Warn when the block was written by a videorope-train whose positions differ from the installed one's."""
    recorded = block.get(PROVENANCE_KEY) if isinstance(block, dict) else None
    if recorded and recorded.get("positions") != POSITIONS_VERSION:
        warnings.warn(
            f"{where} was written by videorope-train {recorded.get('videorope_train')} (positions version "
            f"{recorded.get('positions')}); the installed videorope-train {__version__} computes positions "
            f"differently (version {POSITIONS_VERSION}): the model sees other positions than it was trained with",
            stacklevel=2,
        )


def _two_d_mask(attention_mask, length: int):
    """The [B, L] padding mask of the current tokens, from what transformers passes as attention_mask."""
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.dim() != 2:
        raise ValueError(
            "the VideoRoPE hook needs the 2-D padding mask to place positions (got a precomputed "
            f"{type(attention_mask).__name__} mask, e.g. from a static/compiled cache); use the default dynamic cache"
        )
    return attention_mask[:, -length:]


class VideoRopeConfigMixin:
    """A config carrying a ``videorope`` block.

    It reports the stock ``model_type`` (e.g. ``"qwen2_vl"``) so LLaMA-Factory treats the model as the stock
    family (template, vision tower freezing, mm plugin), but writes ``hooked_model_type(...)`` to config.json: a
    hooked directory then cannot be loaded by stock classes (which would silently train M-RoPE) —
    transformers demands ``trust_remote_code=True`` instead.
    """

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs):
        # config.json's marker is for stock classes (which must refuse the directory); this class is the one it names,
        # so loading reads it as the stock type: no "a model of type qwen2_vl_videorope to instantiate a model of
        # type qwen2_vl" warning on every correct load.
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        if config_dict.get("model_type") == hooked_model_type(cls.model_type):
            config_dict = {**config_dict, "model_type": cls.model_type}
        return config_dict, kwargs

    def __post_init__(self, **kwargs):
        kwargs.pop("model_type", None)  # config.json's marker; keep reporting the class' stock model_type
        super().__post_init__(**kwargs)
        if getattr(self, CONFIG_KEY, None) is not None:  # transformers also builds a bare instance for defaults
            rope_config_of(self)  # validate early: unknown variant, bad δ, ...
            warn_if_positions_changed(getattr(self, CONFIG_KEY))

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output["model_type"] = hooked_model_type(self.model_type)
        if getattr(self, CONFIG_KEY, None) is not None:  # every checkpoint records the version that wrote it
            output[CONFIG_KEY] = config_block(rope_config_of(self))
        return output


class VideoRopeRotaryEmbedding(nn.Module):
    """cos/sin [B, L, head_dim] for 3-row position ids, built once per forward and shared by every layer.

    The frequency tables (axes [F], inv_freq [F] and the extrapolated inv_freq [F]) are built on first use and
    cached per device.  They are not buffers: transformers materialises buffers of meta-initialised models
    with its own initialisers, which do not know this module.
    """

    def __init__(self, rope: RopeConfig, head_dim: int, rope_theta: float, mrope_section):
        super().__init__()
        self.rope = rope
        self.head_dim, self.rope_theta, self.mrope_section = head_dim, float(rope_theta), tuple(mrope_section)
        self._tables: dict = {}
        scaled_inv_freq(rope, head_dim, rope_theta, self.mrope_section, seq_len=0)  # validate now, not mid-run

    def _inv_freq(self, rope: RopeConfig, seq_len=None) -> torch.Tensor:
        return scaled_inv_freq(rope, self.head_dim, self.rope_theta, self.mrope_section, seq_len=seq_len)

    def tables(self, device: torch.device):
        """(axes, inv_freq, extrapolated_inv_freq) on ``device``."""
        tables = self._tables.get(device)
        if tables is None:
            with torch.device("cpu"):
                unscaled = dataclasses.replace(self.rope, extrapolation=None)
                static = self.rope if self.rope.extrapolation not in (None, "dynamic") else unscaled
                tables = (frequency_axes(self.rope, self.mrope_section), self._inv_freq(unscaled), self._inv_freq(static))
            tables = self._tables[device] = tuple(t.to(device) for t in tables)
        return tables

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor):
        """x: any tensor of the compute dtype; position_ids [3, B, L] → (cos, sin) each [B, L, head_dim]."""
        axes, inv_freq, extrapolated = self.tables(position_ids.device)
        rope = self.rope
        if rope.extrapolation is not None and (not self.training or rope.extrapolate_in_training):
            if rope.extrapolation == "dynamic":  # the current length stays a tensor: no host sync
                inv_freq = self._inv_freq(rope, seq_len=position_ids.max() + 1)
            else:
                inv_freq = extrapolated
        device_type = x.device.type if x.device.type != "mps" else "cpu"
        with torch.autocast(device_type=device_type, enabled=False):  # frequencies in float32
            return rotary_cos_sin(position_ids, inv_freq, axes, dtype=x.dtype)


class PlainRotaryAttentionMixin:
    """Attention applying precomputed per-channel cos/sin as plain 1-D rotary.

    Same parameters as the stock class (instances are re-classed in place, see ``hook_language_model``);
    ``forward`` is the stock one with ``apply_multimodal_rotary_pos_emb`` replaced by ``apply_rotary``.
    Subclasses set ``eager_attention_forward`` to their family's.
    """

    eager_attention_forward = None

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        past_key_values=None,
        output_attentions: bool = False,
        use_cache: bool = False,
        position_embeddings=None,
        **kwargs,
    ):
        bsz, q_len, _ = hidden_states.size()
        query_states = self.q_proj(hidden_states).view(bsz, q_len, -1, self.head_dim).transpose(1, 2)
        key_states = self.k_proj(hidden_states).view(bsz, q_len, -1, self.head_dim).transpose(1, 2)
        value_states = self.v_proj(hidden_states).view(bsz, q_len, -1, self.head_dim).transpose(1, 2)

        cos, sin = position_embeddings
        query_states, key_states = apply_rotary(query_states, key_states, cos, sin)

        if past_key_values is not None:
            key_states, value_states = past_key_values.update(key_states, value_states, self.layer_idx)

        attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, type(self).eager_attention_forward
        )
        if "cu_seq_lens_q" in kwargs:  # varlen boundaries from the model: flash-attn need not re-derive them per layer
            position_ids = None
        attn_output, attn_weights = attention_interface(
            self,
            query_states,
            key_states,
            value_states,
            attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling,
            sliding_window=self.sliding_window,
            position_ids=position_ids,  # the sequence-local text row, for FA2 varlen
            **kwargs,
            **attention_call_kwargs(self.config),
        )
        attn_output = attn_output.reshape(bsz, q_len, -1).contiguous()
        return self.o_proj(attn_output), attn_weights


def hook_language_model(language_model: nn.Module, rope: RopeConfig, attention_class: type) -> None:
    text_config = language_model.config
    language_model.rotary_emb = VideoRopeRotaryEmbedding(
        rope,
        head_dim_of(text_config),
        text_config.rope_parameters["rope_theta"],
        text_config.rope_parameters["mrope_section"],
    )
    for layer in language_model.layers:
        # Re-class rather than rebuild: no new parameters, so ZeRO-3's partitioned weights stay where they are.
        layer.self_attn.__class__ = attention_class


class VideoRopeModelMixin:
    """Positions, packing, one vision pass: over a stock ``*VLModel`` (``attention_class`` set by subclasses)."""

    attention_class: type
    vision_attention_class: type

    def __init__(self, config):
        super().__init__(config)
        self.rope = rope_config_of(config)
        hook_language_model(self.language_model, self.rope, self.attention_class)
        for block in self.visual.blocks:
            block.attn.__class__ = self.vision_attention_class

    stock_rope_index_args: tuple = ("attention_mask",)  # stock's positional parameters after video_grid_thw
    frame_blocks: bool = False  # Qwen3-VL: every temporal patch of a video is its own block (rope/positions.py)

    def get_rope_index(self, input_ids: torch.Tensor, mm_token_type_ids=None, image_grid_thw=None, video_grid_thw=None,
                       *more, **kwargs):
        """position_ids [3, B, L] and rope_deltas [B, 1] of this model's variant (see ``rope.get_rope_index``).

        Takes the stock signature, positionally too: ``(input_ids, mm_token_type_ids, image_grid_thw,
        video_grid_thw, [second_per_grid_ts,] attention_mask)``.  ``mm_token_type_ids`` and
        ``second_per_grid_ts`` are not needed: blocks are found from the token ids, and the temporal index is the
        temporal-patch index for every family (Qwen2.5-VL's absolute-time M-RoPE is not reproduced; see the README).
        """
        if len(more) > len(self.stock_rope_index_args):
            raise TypeError(f"get_rope_index takes at most {4 + len(self.stock_rope_index_args)} positional "
                            f"arguments after self ({4 + len(more)} given)")
        for name, value in zip(self.stock_rope_index_args, more):
            if name in kwargs:
                raise TypeError(f"get_rope_index got multiple values for argument '{name}'")
            kwargs[name] = value
        return get_rope_index(
            self.rope,
            input_ids,
            image_grid_thw=image_grid_thw,
            video_grid_thw=video_grid_thw,
            attention_mask=kwargs.get("attention_mask"),
            spatial_merge_size=self.config.vision_config.spatial_merge_size,
            image_token_id=self.config.image_token_id,
            video_token_id=self.config.video_token_id,
            vision_start_token_id=self.config.vision_start_token_id,
            frame_blocks=self.frame_blocks,
        )

    def compute_3d_position_ids(
        self,
        input_ids,
        inputs_embeds,
        image_grid_thw=None,
        video_grid_thw=None,
        attention_mask=None,
        past_key_values=None,
        mm_token_type_ids=None,
        **unused,
    ):
        """Positions when the caller gave none: the full layout on a fresh pass, the decode rule after it.

        rope_deltas are kept on the call's cache object (and mirrored on ``self.rope_deltas`` as stock does),
        so concurrent ``generate`` calls on one model do not read each other's.
        """
        batch, length = inputs_embeds.shape[:2]
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        if past == 0:
            if input_ids is None:
                if image_grid_thw is not None or video_grid_thw is not None:
                    raise ValueError("visual inputs need input_ids to place their blocks (got inputs_embeds only); "
                                     "pass input_ids, or position_ids computed with get_rope_index")
                input_ids = torch.zeros(batch, length, dtype=torch.long, device=inputs_embeds.device)
            position_ids, deltas = self.get_rope_index(
                input_ids, image_grid_thw=image_grid_thw, video_grid_thw=video_grid_thw,
                attention_mask=_two_d_mask(attention_mask, length),
            )
            self.rope_deltas = deltas
            if past_key_values is not None:
                past_key_values.videorope_deltas = deltas
            return position_ids
        deltas = getattr(past_key_values, "videorope_deltas", None)
        if deltas is None:
            raise ValueError("decoding with a KV cache needs this model's prefill pass on the same cache first")
        if deltas.shape[0] != batch:
            deltas = deltas.repeat_interleave(batch // deltas.shape[0], dim=0)
        cache_position = torch.arange(past, past + length, device=inputs_embeds.device)
        position_ids = self.rope.text_position_step * cache_position.view(1, -1) + deltas.to(inputs_embeds.device)
        return position_ids.unsqueeze(0).expand(3, -1, -1)

    def _normalise_position_ids(self, position_ids, input_ids, image_grid_thw, video_grid_thw, attention_mask):
        """Accept [3, B, L] or LLaMA-Factory's [text; t; h; w]; give the text row sequence-local numbering."""
        if position_ids.dim() == 3 and position_ids.shape[0] == 4:
            rows = position_ids[1:]
            if rows.dtype in (torch.float16, torch.bfloat16):
                rows = self._recompute_lossy(rows, input_ids, image_grid_thw, video_grid_thw, attention_mask)
            text_row = sequence_local_positions(position_ids[0]).to(rows.dtype)
            return torch.cat([text_row.unsqueeze(0), rows], dim=0)
        if position_ids.dtype in (torch.float16, torch.bfloat16):
            return self._recompute_lossy(position_ids, input_ids, image_grid_thw, video_grid_thw, attention_mask)
        return position_ids

    def _recompute_lossy(self, rows, input_ids, image_grid_thw, video_grid_thw, attention_mask):
        # Fractional positions (non-integer δ) cast to bf16/fp16 by a data collator lose their integer part
        # beyond 256; rebuild them exactly from the tokens when the row is one sequence.
        if input_ids is None or (rows[0] == 0).sum(dim=-1).max() > 1:
            raise ValueError(
                f"position ids arrived as {rows.dtype}, which cannot hold fractional positions exactly, and cannot "
                f"be rebuilt here (packed sequences or no input_ids); use an integer temporal_stride with packing"
            )
        if input_ids.shape[-1] != rows.shape[-1]:
            raise ValueError("fractional position ids arrived in bf16/fp16 for a partial sequence; pass float32 "
                             "position ids, or none (generate derives its own)")
        mask = _two_d_mask(attention_mask, rows.shape[-1])
        return self.get_rope_index(input_ids, image_grid_thw=image_grid_thw, video_grid_thw=video_grid_thw,
                                   attention_mask=mask)[0]

    _joint_vision = None  # this forward's images and videos, {"inputs": ..., "outputs": ...}: one tower pass

    def _one_vision_pass(self, pixel_values, pixel_values_videos, image_grid_thw, video_grid_thw):
        """The tower's outputs for images and videos from one call over both, split as two calls would give them.

        Stock models call the tower once per modality; under DeepSpeed ZeRO-3 a rank whose batch has both then
        gathers the tower's parameters one more time than a rank with one modality, and the job hangs.  The tower
        attends within each grid item (cu_seqlens), so one joint call gives the same features.  Qwen3-VL's
        deepstack features (one [tokens, hidden] tensor per fed layer) are split at the images' token count.
        """
        joint = torch.cat([pixel_values, pixel_values_videos.to(pixel_values.dtype)], dim=0)
        grid = torch.cat([image_grid_thw, video_grid_thw], dim=0)
        output = super().get_image_features(joint, grid, return_dict=True)
        num_images = image_grid_thw.shape[0]
        image_tokens = sum(item.shape[0] for item in output.pooler_output[:num_images])  # shapes: no host sync
        deepstack = getattr(output, "deepstack_features", None)

        def part(items, rows):
            fields = {"pooler_output": items}
            if deepstack is not None:
                fields["deepstack_features"] = [features[rows] for features in deepstack]
            return type(output)(**fields)

        return (part(output.pooler_output[:num_images], slice(None, image_tokens)),
                part(output.pooler_output[num_images:], slice(image_tokens, None)))

    def _joint_outputs(self):
        # Run when stock's forward first asks for features — after its embedding lookup, as stock runs the tower —
        # so every ZeRO-3 rank gathers parameters in the same order whatever modalities its batch holds.
        if self._joint_vision["outputs"] is None:
            self._joint_vision["outputs"] = self._one_vision_pass(*self._joint_vision["inputs"])
        return self._joint_vision["outputs"]

    def get_image_features(self, pixel_values, image_grid_thw=None, **kwargs):
        if self._joint_vision is not None:
            return self._joint_outputs()[0]
        return super().get_image_features(pixel_values, image_grid_thw, **kwargs)

    def get_video_features(self, pixel_values_videos, video_grid_thw=None, **kwargs):
        if self._joint_vision is not None:
            return self._joint_outputs()[1]
        return super().get_video_features(pixel_values_videos, video_grid_thw, **kwargs)

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, pixel_values=None, pixel_values_videos=None, image_grid_thw=None,
                video_grid_thw=None, **kwargs):
        if position_ids is not None:
            position_ids = self._normalise_position_ids(
                position_ids, input_ids, image_grid_thw, video_grid_thw, attention_mask
            )
            if position_ids.shape[0] == 4 and attention_mask is None and "cu_seq_lens_q" not in kwargs \
                    and is_flash_attention_requested(self.config):
                # packed (or unpadded) rows: flash-attn's varlen boundaries once here, not detected in every layer
                cu_seqlens, longest = varlen_boundaries(position_ids[0])
                kwargs.update(cu_seq_lens_q=cu_seqlens, cu_seq_lens_k=cu_seqlens, max_length_q=longest,
                              max_length_k=longest)
        if pixel_values is not None and pixel_values_videos is not None:
            # stock's forward then takes both modalities' features from one pass (see _one_vision_pass)
            self._joint_vision = {"inputs": (pixel_values, pixel_values_videos, image_grid_thw, video_grid_thw),
                                  "outputs": None}
        try:
            return super().forward(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=past_key_values,
                inputs_embeds=inputs_embeds,
                pixel_values=pixel_values,
                pixel_values_videos=pixel_values_videos,
                image_grid_thw=image_grid_thw,
                video_grid_thw=video_grid_thw,
                **kwargs,
            )
        finally:
            self._joint_vision = None


class VideoRopeGenerationMixin:
    """Over a stock ``*ForConditionalGeneration``: the hooked ``model_class`` inside, positions derived in forward."""

    model_class: type
    pretrained_class: type  # the family's PreTrainedModel, whose __init__ runs instead of the stock one

    def __init__(self, config):
        self.pretrained_class.__init__(self, config)
        self.model = self.model_class(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    @property
    def rope(self) -> RopeConfig:
        return self.model.rope

    def get_rope_index(self, *args, **kwargs):
        return self.model.get_rope_index(*args, **kwargs)

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, attention_mask=None, inputs_embeds=None,
                                      position_ids=None, rope_deltas=None, **kwargs):
        # Stock's named parameters (generate() looks for ``inputs_embeds`` in this signature).  Positions are derived
        # in forward; ids passed by the caller (e.g. a collator's) would be advanced by +1 per step, which is wrong
        # for TAD, fractional positions and prompts that end in a video.
        return super().prepare_inputs_for_generation(input_ids, past_key_values=past_key_values,
                                                     attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                                                     **kwargs)

    def _expand_inputs_for_generation(self, expand_size=1, is_encoder_decoder=False, input_ids=None, **model_kwargs):
        # Beams / several return sequences: generate keeps ``position_ids=None`` (positions are derived in forward),
        # and stock's expansion reads ``.ndim`` of every kwarg named position_ids.
        if "position_ids" in model_kwargs and model_kwargs["position_ids"] is None:
            del model_kwargs["position_ids"]
        return super()._expand_inputs_for_generation(expand_size, is_encoder_decoder, input_ids, **model_kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """``nn.Module.load_state_dict`` that also takes checkpoint files in the Hub layout, and never half-loads.

        The Trainer resumes a run without DeepSpeed by reading ``checkpoint-N/model.safetensors`` — written in the
        Hub layout (``model.layers.*``, ``visual.*``) — into ``load_state_dict(state_dict, strict=False)``; stock
        Qwen2-VL on transformers 5.6 then matches no key and silently trains on from the base weights (transformers
        issue 43701).  Keys are renamed with transformers' own conversion mapping first, and weights that still do
        not load (another model's checkpoint, a truncated file) raise instead of being skipped, whatever ``strict``.
        """
        converted = checkpoint_keys_to_module_keys(self, state_dict)
        result = super().load_state_dict(converted, strict=strict, assign=assign)
        own = self.state_dict(keep_vars=True)
        loaded = {own[key].data_ptr() for key in converted if key in own}
        missing = [key for key in result.missing_keys if own[key].data_ptr() not in loaded]  # tied weights load too
        if missing or result.unexpected_keys:
            raise ValueError(
                f"checkpoint weights do not match this {type(self).__name__}: {len(missing)} of its weights missing "
                f"(e.g. {missing[:3]}), {len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:3]}); "
                f"refusing to continue from partially loaded weights"
            )
        return result

    def _prepare_position_ids_for_generation(self, inputs_tensor, model_kwargs):
        # Positions are derived inside forward (prefill: full layout; then p + rope_deltas), never carried in
        # model_kwargs: generate's "last position + 1" update is wrong for TAD and for prompts ending in a video.
        return None
