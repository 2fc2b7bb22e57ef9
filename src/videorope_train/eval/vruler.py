"""V-RULER (VideoRoPE++): retrieval subtasks beyond one needle, on the V-NIAH machinery.

Subtasks (records in the authors' published format: a JSON list of ``{"path", "prompt", "answer"}``, with
``"interrupt_path"`` for V-NIAH-D; ``path`` is one image, a list, or a string holding a list):

* ``mkmv`` — multi-key multi-value: several needle images, each inserted at a random frame inside the depth bin
  [d·N, (d+0.2)·N) (positions sorted, needles in record order), depths 0, 0.2, …, 0.8;
* ``counting`` / ``ordering`` — the needles inserted right after haystack frames spread evenly over the video
  (``linspace(0, N−1, k)``), in record order; depth plays no part (one row; the authors computed six identical);
* ``vniah-d`` — one needle at depth d with its distractor 200 frames before or after (as ``eval vniah``).

Needles are inserted as extra frames (the haystack is not overwritten), every frame is ``frame_size`` pixels
(9×16 = 144 tokens at 252×448 for Qwen2-VL, 288×512 for Qwen3-VL), embeddings are spliced into the language
model's input in the checkpoint's video layout (as ``eval vniah``), and an item scores 1 when
every answer token is the argmax under teacher forcing (case-sensitive, no partial credit) — the authors' scoring.
A cell (haystack frames N, depth d) is the mean over records; a subtask's score the mean over its cells; the
V-RULER number the mean over the subtasks run. The lengthy multimodal stack (a real video inside ~200k+ tokens of
filler text, answers generated) is ``stack.py``, run from here with ``stack=``.

Results: ``OUT/<subtask>/cells/*.json`` (resumable), ``OUT/<subtask>/summary.json`` + ``heatmap.png``,
``OUT/vruler.json`` + ``OUT/vruler.png`` (one heatmap per subtask).
"""

from __future__ import annotations

import ast
import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..files import write_json
from .data import Needle, load_image, resize_rgb
from .embeddings import cache_key, cached, encode_frames, vision_fingerprint
from .model import LoadedModel, load_model
from .results import CellGrid, model_identity
from .spliced import PromptIds, assemble_batch, forward_tail_logits, prompt_ids, score_tail_logits, sequence_ids
from .video import haystack_frames
from .vniah import VNIAHSettings, depth_grid, distractor_draw, distractor_side, frame_counts, needle_frame_index

SUBTASKS = ("mkmv", "counting", "ordering", "vniah-d")
MKMV_BIN = 0.2


@dataclass(frozen=True)
class RulerRecord:
    images: Tuple[str, ...]  # resolved paths, in record order
    prompt: str
    answer: str
    distractor: Optional[str] = None  # vniah-d

    def needle(self, index: int) -> Needle:  # what prompt_ids reads
        return Needle(name=f"record-{index}", image=self.images[0] if self.images else "", question=self.prompt,
                      answer=self.answer)


def _paths(value, where: str) -> List[str]:
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            value = ast.literal_eval(value)  # the authors store some lists as their Python repr
        except (ValueError, SyntaxError) as error:
            raise ValueError(f"{where}: 'path' {value!r} is not a list of file names") from error
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"{where}: 'path' must be a file name or a list of them, got {value!r}")
    return value


def load_records(path: str | Path, images: str | Path, subtask: str) -> List[RulerRecord]:
    """The authors' record file for ``subtask``, image names resolved under ``images`` (checked here)."""
    if subtask not in SUBTASKS:
        raise ValueError(f"subtask must be one of {SUBTASKS}, got {subtask!r}")
    path, images = Path(path), Path(images)
    records = json.loads(path.read_text())
    if not isinstance(records, list) or not records:
        raise ValueError(f"{path}: expected a non-empty JSON list of records")
    out = []
    for index, record in enumerate(records):
        where = f"{path} record {index}"
        missing = [key for key in ("path", "prompt", "answer") if key not in record]
        if subtask == "vniah-d" and "interrupt_path" not in record:
            missing.append("interrupt_path")
        if missing:
            raise ValueError(f"{where}: missing {missing}")
        names = _paths(record["path"], where)
        if subtask == "vniah-d" and len(names) != 1:
            raise ValueError(f"{where}: V-NIAH-D takes one needle image, got {names}")
        if subtask != "counting" and not names:
            raise ValueError(f"{where}: no needle image")
        resolved = []
        for name in names + ([record["interrupt_path"]] if subtask == "vniah-d" else []):
            file = images / name
            if not file.is_file():
                raise FileNotFoundError(f"{where}: image {name!r} not found under {images}")
            resolved.append(str(file))
        answer = str(record["answer"])
        if not answer:
            raise ValueError(f"{where}: empty answer")
        distractor = resolved.pop() if subtask == "vniah-d" else None
        out.append(RulerRecord(tuple(resolved), str(record["prompt"]), answer, distractor))
    return out


# ------------------------------------------------------------------------------------------------ placement


def mkmv_positions(num_frames: int, depth: float, count: int, rng: random.Random) -> List[int]:
    """Sorted insertion points (before haystack frame p) of ``count`` needles in the bin [d·N, (d+0.2)·N)."""
    start = needle_frame_index(depth, num_frames)
    stop = max(start, needle_frame_index(depth + MKMV_BIN, num_frames) - 1)
    return sorted(rng.randint(start, min(stop, num_frames)) for _ in range(count))


def spread_positions(num_frames: int, count: int) -> List[int]:
    """Insertion points right after haystack frames ``linspace(0, N-1, count)``."""
    return [int(p) + 1 for p in np.linspace(0, num_frames - 1, count).astype(int)] if count else []


def insert_needles(num_frames: int, positions: Sequence[int]) -> List[int]:
    """The video's frames in order: haystack indices (>= 0) and needle k as ``-(k + 1)``, needle k inserted before
    haystack frame ``positions[k]`` (after every earlier needle at the same point)."""
    if list(positions) != sorted(positions) or any(not 0 <= p <= num_frames for p in positions):
        raise ValueError(f"positions {list(positions)} must be sorted within [0, {num_frames}]")
    sources, k = [], 0
    for frame in range(num_frames + 1):
        while k < len(positions) and positions[k] == frame:
            sources.append(-(k + 1))
            k += 1
        if frame < num_frames:
            sources.append(frame)
    return sources


def item_sources(subtask: str, num_frames: int, depth: float, record: RulerRecord, index: int, seed: int = 0,
                 gap: int = 200) -> List[int]:
    count = len(record.images)
    if subtask == "mkmv":
        rng = random.Random(f"{seed}:{num_frames}:{depth:.6f}:{index}")
        return insert_needles(num_frames, mkmv_positions(num_frames, depth, count, rng))
    if subtask in ("counting", "ordering"):
        return insert_needles(num_frames, spread_positions(num_frames, count))
    at = needle_frame_index(depth, num_frames)  # vniah-d: as eval vniah places it; its distractor (-2) gap away
    side = distractor_side(at, num_frames, gap, distractor_draw(seed, num_frames, depth, index))
    if side is None:
        return insert_needles(num_frames, [at])
    positions = sorted([at, at - gap if side == "before" else at + gap])
    sources = insert_needles(num_frames, positions)
    if side == "before":  # the earlier insertion is the distractor
        sources = [{-1: -2, -2: -1}.get(s, s) for s in sources]
    return sources


# ------------------------------------------------------------------------------------------------ the run


@dataclass
class RulerItem:
    record: int
    depth: float
    sources: List[int]
    prompt: PromptIds
    input_ids: List[int] = field(default_factory=list)

    @property
    def video_frames(self) -> int:
        return len(self.sources)


def _depths(subtask: str, interval: float) -> List[float]:
    if subtask == "mkmv":
        return [round(d, 6) for d in np.arange(0.0, 1.0 - 1e-9, MKMV_BIN)]
    if subtask in ("counting", "ordering"):
        return [0.0]
    return depth_grid(interval)


def _records_fingerprint(records: Sequence[RulerRecord]) -> str:
    digest = hashlib.sha1()
    for record in records:
        for image in record.images + ((record.distractor,) if record.distractor else ()):
            digest.update(Path(image).read_bytes())
        digest.update(json.dumps([record.prompt, record.answer]).encode())
    return digest.hexdigest()


def run_vruler(model, haystack, tasks: Dict[str, Tuple[str, str]], out, settings: Optional[VNIAHSettings] = None,
               cache_dir=None, overwrite: bool = False, progress: bool = True, load_kwargs: Optional[dict] = None,
               stack: Optional[dict] = None) -> dict:
    """Run (or resume) the V-RULER subtasks ``{subtask: (records_json, images_dir)}``; returns ``vruler.json``.

    ``settings``: frame counts, depth interval (vniah-d), frame size, haystack fps, seed, batch and chunk sizes —
    the V-NIAH settings (``eval vniah``'s options). ``stack``: the lengthy multimodal stack too (``stack.py``):
    ``{"records", "videos", "contexts", "depths"}`` and optionally ``max_new_tokens``, ``video_tokens``."""
    from tqdm.auto import tqdm

    from .plot import compare_runs

    settings = settings or VNIAHSettings()
    out = Path(out)
    cache = Path(cache_dir) if cache_dir is not None else out / "cache"
    haystack = Path(haystack)
    if tasks and not haystack.is_file():
        raise FileNotFoundError(f"haystack video {haystack} does not exist")
    unknown = sorted(set(tasks) - set(SUBTASKS))
    if unknown or not (tasks or stack):
        raise ValueError(f"subtasks must be among {SUBTASKS}, got {sorted(tasks)}")
    records = {name: load_records(path, images, name) for name, (path, images) in tasks.items()}
    lengths = frame_counts(settings.min_frames, settings.max_frames, settings.frame_interval)
    model_path = model.path if isinstance(model, LoadedModel) else str(model)
    frame_size = tuple(settings.frame_size)
    lm, hay, summaries = None, None, {}
    for name, recs in records.items():
        sub_out = out / name
        depths = _depths(name, settings.depth_interval)
        record = {"subtask": name, "model": model_identity(model_path),
                  "haystack": [str(haystack.resolve()), haystack.stat().st_size], "records": _records_fingerprint(recs),
                  "frame_size": list(frame_size), "haystack_fps": settings.haystack_fps, "seed": settings.seed,
                  "distractor_gap": settings.distractor_gap}
        grid = CellGrid(sub_out, record, name, overwrite)
        extra = {"name": name, "task": name, "model": model_path, "frame_size": list(frame_size)}
        pending = grid.pending(lengths, depths)
        if pending:
            if lm is None:
                lm = model if isinstance(model, LoadedModel) else load_model(model, **(load_kwargs or {}))
                _, _, tokens_per_frame = lm.patch_grid(frame_size)
                fingerprint = vision_fingerprint(lm.model)
                hay_key = cache_key(video=record["haystack"], mtime=haystack.stat().st_mtime_ns, frames=max(lengths),
                               fps=settings.haystack_fps, size=frame_size, vision=fingerprint)
                hay = cached(cache / f"haystack-{hay_key}.pt", lambda: {"embeds": encode_frames(
                    lm, haystack_frames(haystack, max(lengths), frame_size, settings.haystack_fps), frame_size,
                    settings.encode_batch)})["embeds"]

            def encode_images(recs=recs):
                files = [image for r in recs for image in r.images + ((r.distractor,) if r.distractor else ())]
                frames = np.stack([resize_rgb(load_image(f), frame_size) for f in files])
                return {"embeds": encode_frames(lm, frames, frame_size, settings.encode_batch)}

            images = cached(cache / f"{name}-{cache_key(records=record['records'], size=frame_size, vision=fingerprint)}.pt",
                             encode_images)["embeds"]
            offsets, start = [], 0
            for r in recs:
                offsets.append(start)
                start += len(r.images) + (1 if r.distractor else 0)
            prompts = [prompt_ids(lm, r.needle(i)) for i, r in enumerate(recs)]

            def frames_of(item: RulerItem) -> torch.Tensor:
                sources = torch.tensor(item.sources)
                frames = hay.index_select(0, sources.clamp(min=0)).clone()
                for position in (sources < 0).nonzero().flatten().tolist():  # a few needles per item
                    frames[position] = images[offsets[item.record] - 1 - int(sources[position])]
                return frames.reshape(-1, frames.shape[-1])

            bar = tqdm(total=len(pending) * len(recs), desc=f"{name} {Path(model_path).name}", disable=not progress)
            for num_frames, depth in pending:
                entries = []
                items = []
                for index, r in enumerate(recs):
                    sources = item_sources(name, num_frames, depth, r, index, settings.seed, settings.distractor_gap)
                    items.append(RulerItem(index, depth, sources, prompts[index], sequence_ids(
                        lm, prompts[index], len(sources), tokens_per_frame, settings.frame_rate)))
                for begin in range(0, len(items), settings.batch_size):
                    chunk = items[begin:begin + settings.batch_size]
                    batch = assemble_batch(lm, chunk, frames_of, frame_size)
                    keep = max(len(a) for a in batch.answers) + 1
                    tail = forward_tail_logits(lm.model, batch, keep, settings.chunk_size).float()
                    for item, (correct, predicted) in zip(chunk, score_tail_logits(tail, batch.answers)):
                        entries.append({"record": item.record, "correct": int(correct),
                                        "answer": recs[item.record].answer, "predicted": lm.tokenizer.decode(predicted),
                                        "needle_frames": [k for k, s in enumerate(item.sources) if s < 0],
                                        "video_frames": item.video_frames})
                    bar.update(len(chunk))
                grid.write_cell(num_frames, depth, name, entries)
            bar.close()
        summaries[name] = grid.summarize(lengths, depths, extra)
    if stack:
        from .stack import load_stack_records, run_stack

        summaries["stack"] = run_stack(
            lm if lm is not None else model, load_stack_records(stack["records"], stack["videos"]), out / "stack",
            stack["contexts"], stack["depths"], max_new_tokens=stack.get("max_new_tokens", 3),
            chunk_size=settings.chunk_size, video_tokens=stack.get("video_tokens", 32768), load_kwargs=load_kwargs,
            overwrite=overwrite, progress=progress)
    scores = {name: s["average"] for name, s in summaries.items()}
    result = {"subtasks": scores, "complete": all(s["complete"] for s in summaries.values()),
              "vruler": (sum(scores.values()) / len(scores)) if all(v is not None for v in scores.values()) else None}
    write_json(out / "vruler.json", result)
    compare_runs(list(summaries.items()), out / "vruler.png")
    return result
