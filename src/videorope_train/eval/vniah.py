"""V-NIAH / V-NIAH-D: find a needle frame in a long haystack video, on spliced vision embeddings.

Protocol (LongVA's V-NIAH; VideoRoPE's V-NIAH-D, see ``docs/method.md``):

* haystack frames are sampled from one long video; every frame is encoded **once** by the model's own
  vision tower as an image of a fixed size (``frame_size``; 9×16 = 144 tokens at 252×448 for Qwen2-VL, at 288×512
  for Qwen3-VL) and cached on disk (with Qwen3-VL's deepstack features), and so are the needle and distractor
  images (resized to the same size: a needle is just another frame);
* a cell (N frames, depth d) inserts the needle before haystack frame ⌊d·N⌋ (LongVA's ``int(depth *
  num_frames)``); V-NIAH-D also inserts the needle's distractor so that ``gap`` (200) haystack frames lie
  between the two, on a side where it fits (random side when both fit, none when neither does — VideoRoPE's
  rule, with a deterministic per-cell draw so that runs are reproducible and resumable);
* the sequence is the model's chat template around the frames as a video with **one temporal index per frame**
  (``video_grid_thw = [[F, h, w]]``) in the checkpoint's layout — Qwen2-VL: ``<|vision_start|>`` + frames +
  ``<|vision_end|>``; Qwen3-VL: per frame ``<t seconds>`` + ``<|vision_start|>`` + frame + ``<|vision_end|>``, frame
  k at k / ``haystack_fps`` s (1 fps when the haystack is spread evenly) — + question, then the answer tokens;
  positions come from the checkpoint's own ``get_rope_index`` (variant, δ, ...), the model runs in eval mode, so the
  checkpoint's extrapolation (YaRN-V, ...) applies;
* score: teacher-forced exact match — 1 iff the argmax at every answer position is the answer token;
  a cell is the mean over needles, the headline the mean over cells.

Results: ``OUT/cells/len{N}_depth{d}.json`` per cell (existing cells are skipped: resumable), ``OUT/summary.json``
(average), ``OUT/heatmap.png`` (length × depth); embeddings in ``OUT/cache`` (or ``cache_dir``).
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ..rope import head_dim_of
from .data import load_image, load_needles, needles_fingerprint, resize_rgb
from .embeddings import cache_key as _key
from .embeddings import cached as _cached
from .embeddings import encode_frames, vision_fingerprint
from .model import LoadedModel, has_frame_blocks, load_model
from .results import CellGrid
from .results import model_identity as _model_identity
from .spliced import PromptIds, assemble_batch, forward_tail_logits, prompt_ids, score_tail_logits, sequence_ids
from .video import haystack_frames

NEEDLE = -1  # frame_sequence entries: >= 0 haystack frame index, NEEDLE / DISTRACTOR the inserted images
DISTRACTOR = -2
TASKS = ("vniah", "vniah-d")


# ------------------------------------------------------------------------------------------------ the grid


def frame_counts(min_frames: int, max_frames: int, interval: int) -> List[int]:
    """Haystack lengths of the grid: range(min, max + 1, interval) (100, 300, ..., 2900 in the papers)."""
    if min_frames < 1 or max_frames < min_frames or interval < 1:
        raise ValueError(
            f"need 1 <= min_frames <= max_frames and interval >= 1, got {min_frames}, {max_frames}, {interval}"
        )
    return list(range(min_frames, max_frames + 1, interval))


def depth_grid(interval: float) -> List[float]:
    """Needle depths 0, interval, ..., 1 (interval must divide 1: 0.2 → 6 depths, 0.1 → 11)."""
    steps = round(1 / interval) if interval > 0 else 0
    if steps < 1 or abs(steps * interval - 1) > 1e-6:
        raise ValueError(f"depth interval must divide 1 (e.g. 0.1, 0.2, 0.25, 0.5), got {interval}")
    return [round(k / steps, 6) for k in range(steps + 1)]


def needle_frame_index(depth: float, num_frames: int) -> int:
    """The haystack frame the needle goes before: ⌊depth·N⌋ (LongVA's ``int(depth * num_frames)``), in [0, N]."""
    return min(num_frames, max(0, math.floor(depth * num_frames + 1e-9)))


def distractor_side(needle_index: int, num_frames: int, gap: int, draw: float) -> Optional[str]:
    """Where V-NIAH-D puts the distractor: ``"before"``, ``"after"`` or ``None`` (it fits on neither side).

    ``gap`` haystack frames lie between needle and distractor.  It fits before when needle_index - gap >= 0 and
    after when needle_index + gap <= num_frames; when both fit, ``draw`` (uniform in [0, 1)) < 0.5 picks before.
    """
    before = needle_index - gap >= 0
    after = needle_index + gap <= num_frames
    if before and after:
        return "before" if draw < 0.5 else "after"
    return "before" if before else "after" if after else None


def distractor_draw(seed: int, num_frames: int, depth: float, needle: int) -> float:
    """A deterministic uniform draw per (seed, cell, needle): the same side on every (resumed) run."""
    return random.Random(f"{seed}:{num_frames}:{depth:.6f}:{needle}").random()


def frame_sequence(num_frames: int, needle_index: int, side: Optional[str] = None, gap: int = 200) -> List[int]:
    """The video's frames in order: haystack indices, ``NEEDLE`` and (``side``) ``DISTRACTOR``."""
    haystack = list(range(num_frames))
    if not 0 <= needle_index <= num_frames:
        raise ValueError(f"needle index {needle_index} outside [0, {num_frames}]")
    if side is None:
        return haystack[:needle_index] + [NEEDLE] + haystack[needle_index:]
    if side == "before":
        at = needle_index - gap
        if at < 0:
            raise ValueError(f"distractor {gap} frames before frame {needle_index} does not fit")
        return haystack[:at] + [DISTRACTOR] + haystack[at:needle_index] + [NEEDLE] + haystack[needle_index:]
    if side == "after":
        at = needle_index + gap
        if at > num_frames:
            raise ValueError(f"distractor {gap} frames after frame {needle_index} does not fit in {num_frames}")
        return haystack[:needle_index] + [NEEDLE] + haystack[needle_index:at] + [DISTRACTOR] + haystack[at:]
    raise ValueError(f"side must be None, 'before' or 'after', got {side!r}")



@dataclass
class Item:
    """One (cell, needle) sequence."""

    num_frames: int
    depth: float
    needle: int
    sources: List[int]  # frame_sequence
    side: Optional[str]
    prompt: PromptIds
    input_ids: List[int] = field(default_factory=list)

    @property
    def video_frames(self) -> int:
        return len(self.sources)

    def record(self) -> dict:
        return {
            "needle": self.needle,
            "needle_frame": self.sources.index(NEEDLE),
            "distractor": self.side,
            "distractor_frame": self.sources.index(DISTRACTOR) if DISTRACTOR in self.sources else None,
            "video_frames": self.video_frames,
            "tokens": len(self.input_ids),
        }


def make_item(lm: LoadedModel, prompt: PromptIds, num_frames: int, depth: float, needle: int, task: str,
              tokens_per_frame: int, gap: int = 200, seed: int = 0, frame_rate: float = 1.0) -> Item:
    """One (cell, needle) sequence; ``frame_rate``: frames per second of the video shown (Qwen3-VL's times)."""
    index = needle_frame_index(depth, num_frames)
    side = None
    if task == "vniah-d":
        side = distractor_side(index, num_frames, gap, distractor_draw(seed, num_frames, depth, needle))
    sources = frame_sequence(num_frames, index, side, gap)
    ids = sequence_ids(lm, prompt, len(sources), tokens_per_frame, frame_rate)
    return Item(num_frames, depth, needle, sources, side, prompt, ids)


def item_frames(item: Item, haystack: torch.Tensor, needles: torch.Tensor,
                distractors: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The video rows [F·tokens_per_frame, D] of an item from per-frame embeddings [*, tokens_per_frame, D]."""
    sources = torch.tensor(item.sources)
    frames = haystack.index_select(0, sources.clamp(min=0))
    frames[sources == NEEDLE] = needles[item.needle].to(frames.dtype)
    if item.side is not None:
        frames[sources == DISTRACTOR] = distractors[item.needle].to(frames.dtype)
    return frames.reshape(-1, frames.shape[-1])


# ------------------------------------------------------------------------------------------------ the run


@dataclass
class VNIAHSettings:
    min_frames: int = 100
    max_frames: int = 3000
    frame_interval: int = 200
    depth_interval: float = 0.2
    frame_size: Tuple[int, int] = (252, 448)
    task: str = "auto"  # auto: vniah-d when every needle has a distractor
    distractor_gap: int = 200
    haystack_fps: Optional[float] = None  # None: frames spread evenly over the video
    seed: int = 0
    batch_size: int = 1
    chunk_size: Optional[int] = None
    encode_batch: int = 32

    @property
    def frame_rate(self) -> float:
        """Frames per second of the video a spliced item shows (its frame times, for Qwen3-VL's timestamps)."""
        return self.haystack_fps or 1.0


def memory_plan(model_dir: str | Path, settings: VNIAHSettings, dtype_bytes: int = 2) -> List[dict]:
    """Rough GPU memory (GiB) per haystack length, from config.json alone (nothing is loaded).

    Per token of the sequence: KV cache = layers·2·kv_heads·head_dim·bytes; one-pass activation peak ≈ the
    MLP's three [L, intermediate] tensors + a few [L, hidden] ones; chunked prefill keeps the KV cache of the
    whole sequence and the activations of one chunk.  Logits are only computed for the answer positions.
    Weights = the size of the checkpoint's *.safetensors (stored dtype).
    """
    config = json.loads((Path(model_dir) / "config.json").read_text())
    text, vision = config.get("text_config") or config, config["vision_config"]
    hidden, layers = text["hidden_size"], text["num_hidden_layers"]
    heads, kv_heads, inter = text["num_attention_heads"], text["num_key_value_heads"], text["intermediate_size"]
    head_dim = head_dim_of(text)
    patch, merge = vision["patch_size"], vision["spatial_merge_size"]
    height, width = settings.frame_size
    tokens_per_frame = (height // patch) * (width // patch) // merge**2
    if has_frame_blocks(config.get("model_type", "")):  # a block per frame: its time, start and end
        tokens_per_frame += 10
    weights = sum(f.stat().st_size for f in Path(model_dir).glob("*.safetensors"))
    gib = 1024**3
    kv_per_token = layers * 2 * kv_heads * head_dim * dtype_bytes
    act_per_token = (3 * inter + 4 * hidden + 2 * kv_heads * head_dim) * dtype_bytes
    embeds_per_token = 2 * hidden * dtype_bytes  # the spliced input embeddings + the residual stream
    extra_frames = 2 if settings.task == "vniah-d" else 1
    rows = []
    for frames in frame_counts(settings.min_frames, settings.max_frames, settings.frame_interval):
        tokens = (frames + extra_frames) * tokens_per_frame + 100  # + chat template and question (about 100)
        one_pass = weights + tokens * (act_per_token + embeds_per_token)
        chunk = min(tokens, settings.chunk_size or 32768)
        chunked = weights + tokens * (kv_per_token + embeds_per_token) + chunk * act_per_token
        if chunk == tokens:  # short enough: one pass anyway
            chunked = one_pass
        rows.append({"frames": frames, "tokens": tokens, "weights_gib": weights / gib,
                     "kv_cache_gib": tokens * kv_per_token / gib, "one_pass_gib": one_pass / gib,
                     "chunked_gib": chunked / gib, "chunk_size": chunk})
    return rows


def format_memory_plan(rows: Sequence[dict]) -> str:
    lines = ["| frames | tokens | one pass (GiB) | chunked prefill (GiB, chunk) | of which KV cache |",
             "|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['frames']} | {r['tokens']:,} | {r['one_pass_gib']:.1f} | "
                     f"{r['chunked_gib']:.1f} ({r['chunk_size']:,}) | {r['kv_cache_gib']:.1f} |")
    lines.append(f"weights {rows[0]['weights_gib']:.1f} GiB included; rough estimates (bf16, batch 1, "
                 f"flash-attention: no L×L attention matrix)")
    return "\n".join(lines)


def run_vniah(
    model: str | Path | LoadedModel,
    haystack: str | Path,
    needles: str | Path,
    out: str | Path,
    settings: Optional[VNIAHSettings] = None,
    distractors: str | Path | None = None,
    cache_dir: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
    load_kwargs: Optional[dict] = None,
    name: Optional[str] = None,
) -> dict:
    """Run (or resume) V-NIAH / V-NIAH-D for one checkpoint; returns the summary (``computed_cells`` added).

    ``model``: a model directory (loaded only when some cell is still missing) or a ``LoadedModel``.
    """
    from tqdm.auto import tqdm

    settings = settings or VNIAHSettings()
    out = Path(out)
    cache = Path(cache_dir) if cache_dir is not None else out / "cache"
    needle_list = load_needles(needles, distractors)
    task = settings.task
    if task == "auto":
        task = "vniah-d" if all(n.distractor is not None for n in needle_list) else "vniah"
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS} or 'auto', got {settings.task!r}")
    if task == "vniah-d" and any(n.distractor is None for n in needle_list):
        missing = [n.name for n in needle_list if n.distractor is None]
        raise ValueError(f"V-NIAH-D needs a distractor for every needle; missing for {missing} (see --distractors)")
    lengths = frame_counts(settings.min_frames, settings.max_frames, settings.frame_interval)
    depths = depth_grid(settings.depth_interval)
    haystack = Path(haystack)
    if not haystack.is_file():
        raise FileNotFoundError(f"haystack video {haystack} does not exist")
    model_path = model.path if isinstance(model, LoadedModel) else str(model)
    record = {
        "task": task,
        "model": _model_identity(model_path),
        "haystack": [str(haystack.resolve()), haystack.stat().st_size],
        "needles": needles_fingerprint(needle_list),
        "frame_size": list(settings.frame_size),
        "haystack_fps": settings.haystack_fps,
        "distractor_gap": settings.distractor_gap,
        "seed": settings.seed,
    }
    grid = CellGrid(out, record, "V-NIAH", overwrite)
    extra = {"name": name, "task": task, "model": str(model_path), "frame_size": list(settings.frame_size),
             "distractor_gap": settings.distractor_gap if task == "vniah-d" else None}
    pending = grid.pending(lengths, depths)
    previous = out / "summary.json"
    if previous.is_file():  # what only a loaded model tells, kept from the run that computed the cells
        old = json.loads(previous.read_text())
        extra.update({k: old[k] for k in ("tokens_per_frame", "rope") if k in old})
    if not pending:
        return {**grid.summarize(lengths, depths, extra), "computed_cells": 0}

    lm = model if isinstance(model, LoadedModel) else load_model(model, **(load_kwargs or {}))
    frame_size = tuple(settings.frame_size)
    _, _, tokens_per_frame = lm.patch_grid(frame_size)
    extra["tokens_per_frame"] = tokens_per_frame
    extra["rope"] = lm.rope.to_dict()
    fingerprint = vision_fingerprint(lm.model)
    max_needed = max(n for n, _ in pending)
    haystack_key = _key(video=record["haystack"], mtime=haystack.stat().st_mtime_ns, frames=max_needed,
                        fps=settings.haystack_fps, size=frame_size, vision=fingerprint)

    def encode_haystack():
        frames = haystack_frames(haystack, max_needed, frame_size, settings.haystack_fps)
        with tqdm(total=len(frames), desc="encoding haystack", disable=not progress) as bar:
            return {"embeds": encode_frames(lm, frames, frame_size, settings.encode_batch, bar.update)}

    hay = _cached(cache / f"haystack-{haystack_key}.pt", encode_haystack)["embeds"]

    def encode_needles():
        import numpy as np

        images = [resize_rgb(load_image(n.image), frame_size) for n in needle_list]
        value = {"needles": encode_frames(lm, np.stack(images), frame_size, settings.encode_batch)}
        if task == "vniah-d":
            images = [resize_rgb(load_image(n.distractor), frame_size) for n in needle_list]
            value["distractors"] = encode_frames(lm, np.stack(images), frame_size, settings.encode_batch)
        return value

    needle_key = _key(needles=record["needles"], task=task, size=frame_size, vision=fingerprint)
    needle_embeds = _cached(cache / f"needles-{needle_key}.pt", encode_needles)

    def frames_of(item: Item) -> torch.Tensor:
        return item_frames(item, hay, needle_embeds["needles"], needle_embeds.get("distractors"))

    prompts = [prompt_ids(lm, n) for n in needle_list]
    computed = 0
    bar = tqdm(total=len(pending) * len(needle_list), desc=f"{task} {name or Path(model_path).name}",
               disable=not progress)
    try:
        for num_frames in sorted({n for n, _ in pending}):
            cells = [d for n, d in pending if n == num_frames]
            items = [make_item(lm, prompts[k], num_frames, d, k, task, tokens_per_frame, settings.distractor_gap,
                               settings.seed, settings.frame_rate) for d in cells for k in range(len(needle_list))]
            results: Dict[float, list] = {d: [] for d in cells}
            for start in range(0, len(items), settings.batch_size):
                chunk = items[start:start + settings.batch_size]
                batch = assemble_batch(lm, chunk, frames_of, frame_size)
                keep = max(len(a) for a in batch.answers) + 1
                tail = forward_tail_logits(lm.model, batch, keep, settings.chunk_size).float()
                for item, (correct, predicted) in zip(chunk, score_tail_logits(tail, batch.answers)):
                    entry = item.record()
                    entry.update(name=needle_list[item.needle].name, correct=int(correct),
                                 answer=needle_list[item.needle].answer,
                                 predicted=lm.tokenizer.decode(predicted))
                    results[item.depth].append(entry)
                    if len(results[item.depth]) == len(needle_list):
                        grid.write_cell(num_frames, item.depth, task, results[item.depth], key="needles")
                        computed += 1
                bar.update(len(chunk))
    finally:
        bar.close()
    return {**grid.summarize(lengths, depths, extra), "computed_cells": computed}
