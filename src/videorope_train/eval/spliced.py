"""Sequences with spliced frame embeddings: the prompt around a video block, batches with the checkpoint's own
positions, a (chunked) forward that keeps only the answer's logits, and teacher-forced exact match."""

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
    """Token ids around the video block, and the answer's."""

    prefix: Tuple[int, ...]  # chat template up to and including <|vision_start|>
    suffix: Tuple[int, ...]  # <|vision_end|>, the question, the assistant turn's opening
    answer: Tuple[int, ...]


def prompt_ids(lm: LoadedModel, needle: Needle) -> PromptIds:
    """The checkpoint's chat template for a user turn [video, question] with the generation prompt."""
    tokenizer = lm.tokenizer
    video_token = tokenizer.convert_ids_to_tokens(lm.config.video_token_id)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": needle.question}]}]
    text = lm.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if text.count(video_token) != 1:
        raise ValueError(f"the chat template should render one {video_token} for the video, got: {text!r}")
    head, _, tail = text.partition(video_token)

    def encode(text: str) -> Tuple[int, ...]:
        return tuple(tokenizer(text, add_special_tokens=False)["input_ids"])

    answer = encode(needle.answer)
    if not answer:
        raise ValueError(f"needle {needle.name!r} has an empty answer")
    prefix = encode(head)
    if not prefix or prefix[-1] != lm.config.vision_start_token_id:
        raise ValueError("the chat template does not open the video with <|vision_start|>")
    return PromptIds(prefix, encode(tail), answer)


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


@torch.inference_mode()
def assemble_batch(lm: LoadedModel, items: Sequence[SplicedItem], frames_of: Callable[[SplicedItem], torch.Tensor],
                   frame_size: Tuple[int, int]) -> Batch:
    """Token ids, positions (the checkpoint's ``get_rope_index``) and input embeddings with the video rows
    replaced by the items' frame embeddings (``frames_of(item)``: [F·tokens_per_frame, D])."""
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
    video_mask = (input_ids == lm.config.video_token_id).unsqueeze(-1).expand_as(embeds)
    if int(video_mask[..., 0].sum()) != video.shape[0]:
        raise ValueError(f"{int(video_mask[..., 0].sum())} video tokens but {video.shape[0]} frame embedding rows")
    embeds = embeds.masked_scatter(video_mask, video)
    return Batch(input_ids, None if attention_mask is None else attention_mask.to(device), grid,
                 position_ids.to(device), embeds, [item.prompt.answer for item in items])


@torch.inference_mode()
def forward_tail_logits(
    model: torch.nn.Module, batch: Batch, keep: int, chunk_size: Optional[int] = None
) -> torch.Tensor:
    """Logits [B, keep, V] of the last ``keep`` positions (the LM head never sees the other positions).

    ``chunk_size``: chunked prefill — the sequence goes through in pieces of ``chunk_size`` tokens with a KV
    cache, so activations scale with the chunk, not the context (exact: causal attention, same positions).
    """
    embeds, positions, mask = batch.inputs_embeds, batch.position_ids, batch.attention_mask
    length = embeds.shape[1]
    if not chunk_size or length - keep <= chunk_size:
        return model(inputs_embeds=embeds, position_ids=positions, attention_mask=mask, use_cache=False,
                     logits_to_keep=keep).logits
    rope = getattr(model, "rope", None)
    if isinstance(rope, RopeConfig) and rope.extrapolation == "dynamic":
        raise ValueError("chunked prefill cannot be used with 'dynamic' extrapolation (its frequencies depend on the "
                         "length each forward sees); drop --chunk-size")
    cache, stop = None, length - keep
    for start in range(0, stop, chunk_size):
        end = min(start + chunk_size, stop)
        out = model(inputs_embeds=embeds[:, start:end], position_ids=positions[..., start:end],
                    attention_mask=None if mask is None else mask[:, :end], past_key_values=cache, use_cache=True,
                    logits_to_keep=1)
        cache = out.past_key_values
    return model(inputs_embeds=embeds[:, stop:], position_ids=positions[..., stop:], attention_mask=mask,
                 past_key_values=cache, use_cache=True, logits_to_keep=keep).logits


def score_tail_logits(tail: torch.Tensor, answers: Sequence[Sequence[int]]) -> List[Tuple[bool, List[int]]]:
    """(exact match, predicted ids) per row of left-padded sequences ending with their answers."""
    results = []
    for row, answer in enumerate(answers):
        logits = answer_logits(tail[row], len(answer))
        results.append((teacher_forced_exact_match(logits, answer), logits.argmax(-1).tolist()))
    return results
