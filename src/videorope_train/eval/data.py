"""V-NIAH inputs: needle sets in the published layouts (haystack frames come from ``eval/video.py``).

Needle sets (``load_needles``) — one needle is an image, a question and its answer, plus (V-NIAH-D) a
distractor image.  Accepted layouts:

* a JSON list of ``{"image": PATH, "question": STR, "answer": STR, "distractor": PATH}`` (this package's
  layout, written by ``make-vniah-data``; ``distractor`` optional), paths relative to the JSON file;
* LongVA's / VideoRoPE's ``needle_datasets/dataset.json``: ``{"path": NAME, "prompt": STR, "answer": STR}``,
  images next to the JSON or in its ``images/`` folder;
* the Hugging Face dataset ``lmms-lab/v_niah_needles`` as downloaded (``data/test-*.parquet``: columns
  ``image`` {bytes, path}, ``question``, ``answer``);
* a directory holding any of these (``needles.json``, ``dataset.json`` or parquet files).

Distractors (``--distractors``) may also come separately: a JSON list in needle order (same record keys), or
a directory matched by name — VideoRoPE names the distractor of ``NAME.ext`` ``NAME_interrupt.png``.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np


ImageSource = Union[str, bytes]  # a file path or the encoded image itself
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")


@dataclass(frozen=True)
class Needle:
    """One V-NIAH needle: image + question + answer (+ V-NIAH-D distractor image)."""

    name: str
    image: ImageSource
    question: str
    answer: str
    distractor: Optional[ImageSource] = None


# --------------------------------------------------------------------------------------------------- images


def load_image(source: ImageSource):
    """A PIL RGB image from a path or encoded bytes."""
    from PIL import Image

    image = Image.open(io.BytesIO(source)) if isinstance(source, (bytes, bytearray)) else Image.open(source)
    return image.convert("RGB")


def resize_rgb(image, size: Tuple[int, int]) -> np.ndarray:
    """A PIL image resized (bicubic, aspect not kept, as the VideoRoPE haystack code does) → uint8 [H, W, 3]."""
    from PIL import Image

    height, width = size
    return np.asarray(image.convert("RGB").resize((width, height), Image.BICUBIC), dtype=np.uint8)


def source_digest(source: Optional[ImageSource]) -> str:
    if source is None:
        return "-"
    data = bytes(source) if isinstance(source, (bytes, bytearray)) else Path(source).read_bytes()
    return hashlib.sha1(data).hexdigest()


def needles_fingerprint(needles: Sequence[Needle]) -> str:
    """Content hash of a needle set (images, questions, answers, distractors)."""
    digest = hashlib.sha1()
    for needle in needles:
        for part in (needle.question, needle.answer, source_digest(needle.image), source_digest(needle.distractor)):
            digest.update(part.encode() + b"\0")
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------- needles


def _resolve_image(value: str, roots: Sequence[Path], what: str) -> str:
    path = Path(value)
    candidates = [path] if path.is_absolute() else [root / path for root in roots]
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    raise FileNotFoundError(f"{what} image {value!r} not found (looked in {', '.join(str(c) for c in candidates)})")


def _image_field(record: dict, keys=("image", "path")):
    for key in keys:
        if key in record and record[key] is not None:
            return record[key]
    return None


def _records_from_json(path: Path) -> List[dict]:
    data = json.loads(path.read_text())
    if isinstance(data, dict):  # {"needles": [...]} is accepted too
        data = data.get("needles", data.get("test"))
    if not isinstance(data, list) or not data:
        raise ValueError(f"{path}: expected a non-empty JSON list of needles")
    return data


def _needles_from_records(records: List[dict], roots: Sequence[Path], origin: str) -> List[Needle]:
    needles = []
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise ValueError(f"{origin}: needle {index} is not an object")
        image = _image_field(record)
        question = record.get("question", record.get("prompt"))
        answer = record.get("answer")
        if image is None or question is None or answer is None:
            raise ValueError(
                f"{origin}: needle {index} needs an image ('image' or 'path'), a question ('question' or 'prompt') "
                f"and an 'answer'; got keys {sorted(record)}"
            )
        name = Path(image).stem if isinstance(image, str) else f"needle_{index}"
        if isinstance(image, dict):  # datasets' Image feature as JSON: {"bytes": ..., "path": ...}
            name = Path(image.get("path") or name).stem
            image = image.get("bytes") or image.get("path")
        if isinstance(image, str):
            image = _resolve_image(image, roots, f"{origin}: needle {index}")
        distractor = record.get("distractor")
        if isinstance(distractor, str):
            distractor = _resolve_image(distractor, roots, f"{origin}: distractor of needle {index}")
        needles.append(Needle(name, image, str(question), str(answer), distractor))
    return needles


def _needles_from_parquet(files: Sequence[Path]) -> List[Needle]:
    import pyarrow.parquet as pq

    needles = []
    for file in files:
        for row in pq.read_table(file).to_pylist():
            image = row.get("image")
            if isinstance(image, dict):
                name = Path(image.get("path") or f"needle_{len(needles)}").stem
                image = image.get("bytes")
            else:
                name = f"needle_{len(needles)}"
            if not image or row.get("question") is None or row.get("answer") is None:
                raise ValueError(f"{file}: rows need 'image' (with bytes), 'question' and 'answer' columns")
            needles.append(Needle(name, bytes(image), str(row["question"]), str(row["answer"])))
    return needles


def _attach_distractors(needles: List[Needle], spec: Union[str, Path]) -> List[Needle]:
    spec = Path(spec)
    if spec.is_file():
        records = _records_from_json(spec)
        if len(records) != len(needles):
            raise ValueError(
                f"{spec}: {len(records)} distractors for {len(needles)} needles (expected one each, in order)"
            )
        roots = [spec.parent, spec.parent / "images"]
        sources = []
        for index, record in enumerate(records):
            value = record if isinstance(record, str) else _image_field(record, ("distractor", "image", "path"))
            if not isinstance(value, str):
                raise ValueError(f"{spec}: distractor {index} has no image path")
            sources.append(_resolve_image(value, roots, f"{spec}: distractor {index}"))
    elif spec.is_dir():
        files = {p.stem: p for p in sorted(spec.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES}
        sources = []
        for needle in needles:
            match = files.get(f"{needle.name}_interrupt") or files.get(needle.name)
            if match is None:
                raise ValueError(
                    f"no distractor for needle {needle.name!r} in {spec} (looked for {needle.name}_interrupt.* and "
                    f"{needle.name}.*; found {sorted(files)[:10]}); give a JSON list in needle order instead"
                )
            sources.append(str(match))
    else:
        raise FileNotFoundError(f"distractors {spec} does not exist")
    return [Needle(n.name, n.image, n.question, n.answer, d) for n, d in zip(needles, sources)]


def load_needles(spec: Union[str, Path], distractors: Union[str, Path, None] = None) -> List[Needle]:
    """The needles of a JSON file or directory (see the module docstring for the layouts)."""
    spec = Path(spec)
    if spec.is_dir():
        for name in ("needles.json", "dataset.json"):
            if (spec / name).is_file():
                return load_needles(spec / name, distractors)
        parquet = sorted(spec.rglob("*.parquet"))
        if not parquet:
            raise FileNotFoundError(f"{spec} holds no needles.json, dataset.json or *.parquet")
        needles = _needles_from_parquet(parquet)
    elif spec.is_file():
        needles = _needles_from_records(_records_from_json(spec), [spec.parent, spec.parent / "images"], str(spec))
    else:
        raise FileNotFoundError(f"needles {spec} does not exist")
    if not needles:
        raise ValueError(f"{spec}: no needles")
    return _attach_distractors(needles, distractors) if distractors is not None else needles
