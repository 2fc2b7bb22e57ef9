"""V-RULER's lengthy multimodal stack: a real video inside a long stack of filler text, answered by generation.

As the authors' ``eval_v_ruler_lengthy_multimodal_stack.py``: records in LongVideoBench's format (``video_path``,
``question``, ``candidates``, ``correct_choice``); the video at 2 fps within a fixed visual budget (32,768 tokens'
worth of pixels by default, each frame at least 144 tokens, a token being the checkpoint's 28×28 or 32×32 pixels;
Qwen3-VL's prompt carries each temporal patch's time); the filler ``"This is noise text, please ignore it."``
repeated ⌊(context − video budget) / its token count⌋ times, ⌊n·(1 − d)⌋ copies before the video and ⌊n·d⌋ after
it (depth 0: the video right before the question; 1: at the very start); the question as ``"Question: …\\nOptions:
\\n(A) …"``; greedy decoding. Scored by the first option letter in the answer against ``correct_choice`` (the
authors' scoring script is not published; this is LongVideoBench's rule). A cell (context, depth) is the mean over
records.

The prompt is prefilled in chunks with a KV cache (``chunk_size``) and the answer decoded token by token with the
checkpoint's own positions, so a context of 200k+ tokens needs the cache, not the activations, of all of it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch

from ..rope import RopeConfig
from ..video import VideoBudget
from .model import LoadedModel, load_model
from .results import CellGrid, model_identity
from .spliced import Deepstack, language_forward

NOISE = "This is noise text, please ignore it."
VIDEO_TOKENS = 32768  # the authors' visual budget for the stacked video
LETTERS = "ABCDEFGH"


@dataclass(frozen=True)
class StackRecord:
    video: str
    question: str
    candidates: tuple
    correct: int


def load_stack_records(path: str | Path, videos: str | Path) -> List[StackRecord]:
    path, videos = Path(path), Path(videos)
    records = json.loads(path.read_text())
    if not isinstance(records, list) or not records:
        raise ValueError(f"{path}: expected a non-empty JSON list of LongVideoBench records")
    out = []
    for index, record in enumerate(records):
        missing = [k for k in ("video_path", "question", "candidates", "correct_choice") if k not in record]
        if missing:
            raise ValueError(f"{path} record {index}: missing {missing}")
        video = videos / record["video_path"]
        if not video.is_file():
            raise FileNotFoundError(f"{path} record {index}: video {record['video_path']!r} not found under {videos}")
        candidates = tuple(str(c) for c in record["candidates"])
        correct = int(record["correct_choice"])
        if not 0 <= correct < len(candidates) <= len(LETTERS):
            raise ValueError(f"{path} record {index}: correct_choice {correct} outside its {len(candidates)} candidates")
        out.append(StackRecord(str(video), str(record["question"]), candidates, correct))
    return out


def question_text(record: StackRecord) -> str:
    options = "\n".join(f"({LETTERS[k]}) {c}" for k, c in enumerate(record.candidates))
    return f"Question: {record.question}\nOptions:\n{options}".rstrip()


def filler_split(copies: int, depth: float) -> tuple:
    """(copies before the video, copies after it)."""
    return int(copies * (1 - depth)), int(copies * depth)


def answer_letter(text: str) -> Optional[str]:
    """The option letter an answer names: a parenthesised ``(B)`` first, else the first standalone capital A–H that
    is not the article "A" starting a phrase ("A video of …")."""
    text = text.strip()
    bracketed = re.search(r"\(([A-H])\)", text)
    if bracketed:
        return bracketed.group(1)
    for match in re.finditer(r"\b([A-H])\b", text):
        if match.group(1) == "A" and re.match(r"\s+[a-z]", text[match.end():]):
            continue  # an article, not option A
        return match.group(1)
    return None


@torch.inference_mode()
def greedy_answer(lm: LoadedModel, inputs, max_new_tokens: int, chunk_size: Optional[int] = None
                  ) -> Tuple[List[int], torch.Tensor]:
    """Greedy tokens after the prompt and the logits [tokens, vocab] (float32) each was chosen from: chunked prefill of
    the spliced embeddings (with Qwen3-VL's deepstack features) with the checkpoint's positions, then one token at a
    time with the KV cache (positions continue from the prompt's last one by the variant's step)."""
    model, device = lm.model, lm.input_device
    input_ids = inputs["input_ids"].to(device)
    grid = inputs["video_grid_thw"].to(device)
    embeds = model.get_input_embeddings()(input_ids)
    features = model.model.get_video_features(inputs["pixel_values_videos"].to(lm.vision_device), grid)
    video = torch.cat(list(features.pooler_output)).to(device, embeds.dtype)
    visual = input_ids == lm.config.video_token_id
    embeds = embeds.masked_scatter(visual.unsqueeze(-1).expand_as(embeds), video)
    deepstack = getattr(features, "deepstack_features", None)
    deepstack = Deepstack(visual, [f.to(device) for f in deepstack]) if deepstack else None
    positions = lm.positions(input_ids, grid).to(device)
    rope = getattr(model, "rope", None)
    length = embeds.shape[1]
    step = chunk_size or length
    if step < length and isinstance(rope, RopeConfig) and rope.extrapolation == "dynamic":
        raise ValueError("chunked prefill cannot be used with 'dynamic' extrapolation; drop the chunk size")
    cache, out = None, None
    for start in range(0, length, step):
        end = min(start + step, length)
        out = language_forward(model, embeds[:, start:end], positions[..., start:end],
                               None if deepstack is None else deepstack.window(start, end), 1, past_key_values=cache,
                               use_cache=True)
        cache = out.past_key_values
    tokens, logits, last = [], [], positions[..., -1:]
    position_step = rope.text_position_step if isinstance(rope, RopeConfig) else 1  # stock M-RoPE: one per token
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    for _ in range(max_new_tokens):
        logits.append(out.logits[0, -1].float())
        token = int(logits[-1].argmax())
        tokens.append(token)
        if token in eos:
            break
        last = last + position_step  # text after the prompt: the same step on every axis (TAD: two)
        out = model(inputs_embeds=model.get_input_embeddings()(torch.tensor([[token]], device=device)),
                    position_ids=last, past_key_values=cache, use_cache=True, logits_to_keep=1)
        cache = out.past_key_values
    return tokens, torch.stack(logits)


def stack_inputs(lm: LoadedModel, record: StackRecord, context: int, depth: float, video_tokens: int = VIDEO_TOKENS):
    """Processor inputs of one (record, context, depth) item, and the filler copies used."""
    from .video import read_video

    geometry = lm.geometry
    budget = VideoBudget.of_tokens(geometry.token_pixels, total=video_tokens, max_frame=768,
                                   min_frame=min(144, video_tokens))
    noise_tokens = len(lm.tokenizer(NOISE, add_special_tokens=False)["input_ids"])
    copies = max(0, (context - video_tokens) // noise_tokens)
    before, after = filler_split(copies, depth)
    content = []
    if before:
        content.append({"type": "text", "text": " ".join([NOISE] * before)})
    content.append({"type": "video"})
    content.append({"type": "text", "text": " ".join([NOISE] * after + [question_text(record)])})
    prompt = lm.processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                              add_generation_prompt=True)
    video = read_video(record.video, budget, geometry=geometry)
    inputs = lm.processor(text=[prompt], videos=[video.frames], return_tensors="pt",
                          videos_kwargs={"do_resize": False, "do_sample_frames": False,
                                         "video_metadata": [video.metadata()]})
    return inputs, (before, after)


def run_stack(model, records: Sequence[StackRecord], out, contexts: Sequence[int], depths: Sequence[float],
              max_new_tokens: int = 3, chunk_size: Optional[int] = None, video_tokens: int = VIDEO_TOKENS,
              load_kwargs: Optional[dict] = None, overwrite: bool = False, progress: bool = True) -> dict:
    """Run (or resume) the lengthy multimodal stack: one cell per (context, depth); returns the summary."""
    from tqdm.auto import tqdm

    model_path = model.path if isinstance(model, LoadedModel) else str(model)
    record = {"model": model_identity(model_path), "video_tokens": video_tokens,
              "records": [[r.video, r.question, list(r.candidates), r.correct] for r in records],
              "max_new_tokens": max_new_tokens}
    grid = CellGrid(out, record, "stack", overwrite)
    extra = {"name": "stack", "task": "stack", "model": model_path, "video_tokens": video_tokens}
    pending = grid.pending(contexts, depths)
    if pending:
        lm = model if isinstance(model, LoadedModel) else load_model(model, **(load_kwargs or {}))
        for context, depth in tqdm(pending, desc="stack", disable=not progress):
            entries = []
            for index, record in enumerate(records):
                inputs, (before, after) = stack_inputs(lm, record, context, depth, video_tokens)
                tokens, _ = greedy_answer(lm, inputs, max_new_tokens, chunk_size)
                text = lm.tokenizer.decode(tokens, skip_special_tokens=True)
                letter = answer_letter(text)
                entries.append({"record": index, "prediction": text, "letter": letter,
                                "answer": LETTERS[record.correct], "correct": int(letter == LETTERS[record.correct]),
                                "tokens": int(inputs["input_ids"].shape[1]), "filler_before": before,
                                "filler_after": after})
            grid.write_cell(context, depth, "stack", entries)
    return grid.summarize(list(contexts), list(depths), extra)
