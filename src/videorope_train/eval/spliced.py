"""Sequences with spliced frame embeddings: the prompt around a video, batches with the checkpoint's own positions,
a (chunked) forward that keeps only the answer's logits, and teacher-forced exact match.

The video's token layout is the checkpoint's (``LoadedModel.video_ids``: one block for Qwen2-VL, a block per frame
after its time for Qwen3-VL), and Qwen3-VL's deepstack features, carried next to each frame's embeddings
(``embeddings.encode_frames``), are added to the first language layers as the model's own forward adds them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Protocol, Sequence, Tuple

import torch

from ..rope import RopeConfig
from .data import Needle
from .model import LoadedModel


def teacher_forced_exact_match(logits: torch.Tensor, answer_ids: Sequence[int]) -> bool:
    """1 iff argmax(logits[k]) == answer_ids[k] for every answer token.

    ``logits`` [A, V]: row k is the prediction *for* answer token k, i.e. the logits at the position just
    before it (see ``answer_logits``).
    """
    answer = torch.as_tensor(list(answer_ids), device=logits.device)
    if logits.dim() != 2 or logits.shape[0] != answer.numel() or answer.numel() == 0:
        raise ValueError(f"logits {tuple(logits.shape)} do not match {answer.numel()} answer tokens")
    return bool((logits.argmax(dim=-1) == answer).all())


def answer_logits(tail_logits: torch.Tensor, answer_len: int) -> torch.Tensor:
    """The rows predicting the answer, from the logits of a sequence's last K positions ([K, V], K > answer_len)
    when the sequence ends with the answer: positions L-A-1 ... L-2 (teacher forcing)."""
    keep = tail_logits.shape[0]
    if not 0 < answer_len < keep:
        raise ValueError(f"need 0 < answer_len ({answer_len}) < kept positions ({keep})")
    return tail_logits[keep - 1 - answer_len : keep - 1]


@dataclass(frozen=True)
class PromptIds:
    """Token ids around the video, and the answer's."""

    prefix: Tuple[int, ...]  # chat template up to the video (its <|vision_start|> excluded)
    suffix: Tuple[int, ...]  # after the video's <|vision_end|>: the question, the assistant turn's opening
    answer: Tuple[int, ...]


def prompt_ids(lm: LoadedModel, needle: Needle) -> PromptIds:
    """The checkpoint's chat template for a user turn [video, question] with the generation prompt."""
    tokenizer = lm.tokenizer
    names = tokenizer.convert_ids_to_tokens(
        [lm.config.vision_start_token_id, lm.config.video_token_id, lm.config.vision_end_token_id])
    video = "".join(names)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": needle.question}]}]
    text = lm.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if text.count(names[1]) != 1 or video not in text:
        raise ValueError(f"the chat template should render the video as one {video}, got: {text!r}")
    head, _, tail = text.partition(video)

    def encode(text: str) -> Tuple[int, ...]:
        return tuple(tokenizer(text, add_special_tokens=False)["input_ids"])

    answer = encode(needle.answer)
    if not answer:
        raise ValueError(f"needle {needle.name!r} has an empty answer")
    return PromptIds(encode(head), encode(tail), answer)


def sequence_ids(lm: LoadedModel, prompt: PromptIds, frames: int, tokens_per_frame: int, frame_rate: float = 1.0
                 ) -> List[int]:
    """The whole sequence of a spliced item: prefix, a video of ``frames`` frames — each its own temporal patch, frame
    k taken at k / ``frame_rate`` s (Qwen3-VL writes those times) — in the checkpoint's layout, suffix, answer."""
    video = lm.video_ids(tokens_per_frame, [k / frame_rate for k in range(frames)])
    return list(prompt.prefix) + video + list(prompt.suffix) + list(prompt.answer)


@dataclass
class Deepstack:
    """Qwen3-VL's deepstack features of a batch: the tower's features that its first K language layers add to the
    hidden states at the visual positions (what stock ``Qwen3VLModel.forward`` passes the language model)."""

    mask: torch.Tensor  # [B, L] bool: the visual positions
    features: List[torch.Tensor]  # K tensors [visual positions, D], rows in (row, position) order of ``mask``

    def window(self, start: int, end: int) -> "Deepstack":
        """The features of positions [start, end) of every row (a chunk of a chunked prefill)."""
        rows = (self.mask.flatten().cumsum(0) - 1).view_as(self.mask)[:, start:end][self.mask[:, start:end]]
        return Deepstack(self.mask[:, start:end], [f[rows] for f in self.features])


def split_deepstack(rows: torch.Tensor, width: int) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """``encode_frames``' rows [N, D·(1 + K)] -> (the tower's output [N, D], K deepstack features [N, D])."""
    if rows.shape[-1] % width:
        raise ValueError(f"frame embeddings of width {rows.shape[-1]} for a language model of width {width}")
    main, *deepstack = rows.split(width, dim=-1)
    return main, deepstack


def language_forward(model: torch.nn.Module, inputs_embeds: torch.Tensor, position_ids: torch.Tensor,
                     deepstack: Optional[Deepstack] = None, logits_to_keep: int = 1, **kwargs):
    """The model's forward on input embeddings (``**kwargs``: attention_mask, past_key_values, use_cache).  With
    deepstack features, the language model and LM head are called as the model's own forward calls them (it takes
    no deepstack features from outside); the output has ``logits`` and ``past_key_values`` either way."""
    if deepstack is None:
        return model(inputs_embeds=inputs_embeds, position_ids=position_ids, logits_to_keep=logits_to_keep, **kwargs)
    from transformers.modeling_outputs import CausalLMOutputWithPast

    out = model.model.language_model(inputs_embeds=inputs_embeds, position_ids=position_ids,
                                     visual_pos_masks=deepstack.mask, deepstack_visual_embeds=deepstack.features,
                                     **kwargs)
    logits = model.lm_head(out.last_hidden_state[:, -logits_to_keep:])
    return CausalLMOutputWithPast(logits=logits, past_key_values=out.past_key_values)


class SplicedItem(Protocol):
    """What ``assemble_batch`` reads of an item (V-NIAH's ``Item``, V-RULER's ``RulerItem``)."""

    input_ids: List[int]  # the whole sequence: prompt prefix, video tokens, suffix, answer
    prompt: PromptIds

    @property
    def video_frames(self) -> int: ...


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, L], left-padded
    attention_mask: Optional[torch.Tensor]  # None when nothing is padded
    video_grid_thw: torch.Tensor  # [B, 3]
    position_ids: torch.Tensor  # [3, B, L]
    inputs_embeds: torch.Tensor  # [B, L, D]
    answers: List[Tuple[int, ...]]
    deepstack: Optional[Deepstack] = None  # Qwen3-VL


@torch.inference_mode()
def assemble_batch(lm: LoadedModel, items: Sequence[SplicedItem], frames_of: Callable[[SplicedItem], torch.Tensor],
                   frame_size: Tuple[int, int]) -> Batch:
    """Token ids, positions (the checkpoint's ``get_rope_index``) and input embeddings with the video rows
    replaced by the items' frame embeddings (``frames_of(item)``: [F·tokens_per_frame, D·(1 + K)], see
    ``encode_frames``; the deepstack part goes to ``Batch.deepstack``)."""
    grid_h, grid_w, _ = lm.patch_grid(frame_size)
    length = max(len(item.input_ids) for item in items)
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(items), length), pad, dtype=torch.long)
    mask = torch.zeros((len(items), length), dtype=torch.long)
    for row, item in enumerate(items):
        input_ids[row, length - len(item.input_ids):] = torch.tensor(item.input_ids)
        mask[row, length - len(item.input_ids):] = 1
    attention_mask = None if bool(mask.all()) else mask
    grid = torch.tensor([[item.video_frames, grid_h, grid_w] for item in items], dtype=torch.long)
    position_ids = lm.positions(input_ids, grid, attention_mask)
    device = lm.input_device
    input_ids = input_ids.to(device)
    embeds = lm.model.get_input_embeddings()(input_ids)
    video = torch.cat([frames_of(item).to(device, embeds.dtype) for item in items])
    video, deepstack = split_deepstack(video, embeds.shape[-1])
    visual = input_ids == lm.config.video_token_id
    if int(visual.sum()) != video.shape[0]:
        raise ValueError(f"{int(visual.sum())} video tokens but {video.shape[0]} frame embedding rows")
    embeds = embeds.masked_scatter(visual.unsqueeze(-1).expand_as(embeds), video)
    return Batch(input_ids, None if attention_mask is None else attention_mask.to(device), grid,
                 position_ids.to(device), embeds, [item.prompt.answer for item in items],
                 Deepstack(visual, deepstack) if deepstack else None)


@torch.inference_mode()
def forward_tail_logits(
    model: torch.nn.Module, batch: Batch, keep: int, chunk_size: Optional[int] = None
) -> torch.Tensor:
    """Logits [B, keep, V] of the last ``keep`` positions (the LM head never sees the other positions).

    ``chunk_size``: chunked prefill — the sequence goes through in pieces of ``chunk_size`` tokens with a KV
    cache, so activations scale with the chunk, not the context (exact: causal attention, same positions).
    """
    embeds, positions, mask, deepstack = batch.inputs_embeds, batch.position_ids, batch.attention_mask, batch.deepstack
    length = embeds.shape[1]
    if not chunk_size or length - keep <= chunk_size:
        return language_forward(model, embeds, positions, deepstack, keep, attention_mask=mask,
                                use_cache=False).logits
    rope = getattr(model, "rope", None)
    if isinstance(rope, RopeConfig) and rope.extrapolation == "dynamic":
        raise ValueError("chunked prefill cannot be used with 'dynamic' extrapolation (its frequencies depend on the "
                         "length each forward sees); drop --chunk-size")

    def window(start, end):
        return None if deepstack is None else deepstack.window(start, end)

    cache, stop = None, length - keep
    for start in range(0, stop, chunk_size):
        end = min(start + chunk_size, stop)
        out = language_forward(model, embeds[:, start:end], positions[..., start:end], window(start, end), 1,
                               attention_mask=None if mask is None else mask[:, :end], past_key_values=cache,
                               use_cache=True)
        cache = out.past_key_values
    return language_forward(model, embeds[:, stop:], positions[..., stop:], window(stop, length), keep,
                            attention_mask=mask, past_key_values=cache, use_cache=True).logits


def score_tail_logits(tail: torch.Tensor, answers: Sequence[Sequence[int]]) -> List[Tuple[bool, List[int]]]:
    """(exact match, predicted ids) per row of left-padded sequences ending with their answers."""
    results = []
    for row, answer in enumerate(answers):
        logits = answer_logits(tail[row], len(answer))
        results.append((teacher_forced_exact_match(logits, answer), logits.argmax(-1).tolist()))
    return results
