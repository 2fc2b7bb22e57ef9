"""What differs between transformers releases, in one place; the rest of the hook is release-agnostic.

transformers 5.6.0's ``flash_attention_forward`` calls ``s_aux.to(query.dtype)`` with ``s_aux=None``, so every
flash-attention forward raises ``AttributeError: 'NoneType' object has no attribute 'to'`` (transformers issue
45588, fixed by PR 45589 in 5.6.1).  LLaMA-Factory 0.9.5 accepts transformers <= 5.6.0 only, so the hooked models
carry the fix themselves: each of their attention calls (language model and vision tower) passes an ``s_aux`` whose
``.to()`` is ``None`` — what the fixed releases pass on.  Nothing global changes: other models in the process see
stock transformers.
"""

from __future__ import annotations

from importlib import metadata

from packaging.version import Version
from transformers.utils.generic import is_flash_attention_requested

TRANSFORMERS_VERSION = Version(metadata.version("transformers"))

FLASH_SINK_BUG = {Version("5.6.0")}
"""Releases whose flash-attention integration crashes on ``s_aux=None`` (issue 45588; fixed in 5.6.1)."""


class _NoAttentionSink:
    """Stands for "no attention sink" on a release with the bug: ``.to(dtype)`` gives the ``None`` it should be."""

    def to(self, *args, **kwargs):
        return None

    def __repr__(self) -> str:
        return "NO_ATTENTION_SINK"


NO_ATTENTION_SINK = _NoAttentionSink()


def attention_call_kwargs(config) -> dict:
    """Keyword arguments a hooked model's attention module adds to its attention-interface call."""
    if TRANSFORMERS_VERSION in FLASH_SINK_BUG and is_flash_attention_requested(config):
        return {"s_aux": NO_ATTENTION_SINK}
    return {}


class FlashSafeAttentionMixin:
    """A stock attention module (vision tower, or Qwen3-VL's text attention), with ``attention_call_kwargs`` (instances are re-classed in place)."""

    def forward(self, *args, **kwargs):
        return super().forward(*args, **kwargs, **attention_call_kwargs(self.config))


def checkpoint_keys_to_module_keys(model, state_dict: dict) -> dict:
    """A state dict in the Hub layout that ``save_pretrained`` writes (``model.layers.*``, ``visual.*``) renamed to
    the module's own names (``model.language_model.layers.*``, ``model.visual.*``) with transformers' own
    conversion mapping for the model type — what ``from_pretrained`` applies and plain ``load_state_dict`` does not.
    Keys already in the module's layout pass unchanged."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightRenaming, rename_source_key

    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if not isinstance(t, WeightRenaming)]
    return {rename_source_key(key, renamings, converters)[0]: value for key, value in state_dict.items()}
