"""`videorope-train prepare-llava-video`: LLaVA-Video-178K -> LLaMA-Factory sharegpt shards + dataset_info entries.

Input layout (as published at huggingface.co/datasets/lmms-lab/LLaVA-Video-178K, downloaded with
``huggingface-cli download --repo-type dataset lmms-lab/LLaVA-Video-178K --local-dir SRC``)::

    SRC/<duration>_<source>/                         duration in {0_30_s, 30_60_s, 1_2_m, 2_3_m}
        <duration>_<source>_cap_processed.json       e.g. 0_30_s_academic_v0_1_cap_processed.json
        <duration>_<source-head>_oe_<...>_qa_processed.json   e.g. 0_30_s_academic_oe_v0_1_qa_processed.json
        <duration>_<source-head>_mc_<...>_qa_processed.json   e.g. 0_30_s_academic_mc_v0_1_qa_processed.json
        <duration>_<source>_videos_<n>.tar.gz        extracted in place (``tar -xzf ... -C SRC/<subset>``)
        academic_source/..., liwei_youtube_videos/..., ...   the extracted videos

Sources seen in the published tree: ``academic_v0_1``, ``youtube_v0_1`` (the 178K proper) and
``activitynetqa``, ``nextqa``, ``perceptiontest`` (public sets shipped alongside); all are used unless
``--sources`` restricts them. Folders without a duration prefix (``llava_hound``, ``gpt4o_*_prompt``) are
ignored. Annotation files are the subset folder's ``*.json`` files whose name has a ``cap``, ``oe`` or ``mc``
token (the dataset card's ``*cap*.json`` / ``*oe*.json`` / ``*mc*.json`` splits); each is a JSON array of
records ``{"id", "conversations": [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", ...}, ...],
"data_source", "video": "relative/path.mp4"}``.

Assumptions (not all verifiable without the 1.5 TB download):

* ``video`` is relative to the subset folder once its tarballs are extracted there. Because people extract
  elsewhere too, a video is looked up, in order, under each ``--video-root R`` as ``R/<video>`` and
  ``R/<subset>/<video>``, then ``SRC/<subset>/<video>``, ``SRC/<subset>/videos/<video>`` and ``SRC/<video>``;
  the first existing file wins. Videos found nowhere are skipped, counted, and listed in
  ``OUT/llava_video_178k/missing_videos.txt`` (one expected path ``SRC/<subset>/<video>`` a line).
* A video belongs to one subset; the same video is shared by that subset's cap/oe/mc files.
* Duration: by default the folder name decides (0_30_s, 30_60_s, 1_2_m -> split ``0_2m``; 2_3_m -> ``2_3m``)
  and a subset whose upper bound (30/60/120/180 s) exceeds ``--max-duration-s`` is dropped whole. With
  ``--probe-duration`` every candidate video is opened with PyAV: longer than ``--max-duration-s`` is dropped,
  shorter than 120 s goes to ``0_2m``, the rest to ``2_3m`` (unreadable files are skipped and reported).

The paper's split (docs/method.md, the recipe): 136k videos under 2 min + 18k videos of 2-3 min (~1.3M QA). Sampling
is by video (all records of a sampled video are kept): among the present, eligible videos of a split, sorted
by key ``<subset>/<video>``, ``random.Random(f"{seed}-{split}").sample(keys, cap)``; fewer than ``cap``
available keeps them all. ``--videos-0-2m all`` lifts a cap.

Output, under ``OUT``::

    OUT/dataset_info.json                       entries llava_video_178k_0_2m / llava_video_178k_2_3m (merged)
    OUT/llava_video_178k/0_2m/<annotation-file-stem>-00000.json   sharegpt JSON arrays, <= --shard-size records
    OUT/llava_video_178k/2_3m/...
    OUT/llava_video_178k/prepare_state.json     settings + finished input files and their shards (resume)
    OUT/llava_video_178k/selection.json         the sampled videos (pass 1 result, reused on resume)
    OUT/llava_video_178k/missing_videos.txt     videos referenced but not found
    OUT/llava_video_178k/summary.json           the summary printed at the end

``file_name`` of an entry is the shard *folder* (``llava_video_178k/0_2m``): LLaMA-Factory loads every file
of a folder, so nothing but shards ever lands there (temporary files are written one level up). Records are
``{"messages": [{"role": "user", "content": "<video>\\n..."}, {"role": "assistant", "content": ...}, ...],
"videos": [PATH]}``: the LLaVA ``<image>`` placeholder becomes exactly one ``<video>`` in the first user turn
(added at the front when absent; any other ``<image>``/``<video>`` text is removed), multi-turn conversations
are kept, and a trailing unanswered user turn is dropped. ``PATH`` is absolute by default; with
``--media-dir M`` it is relative to ``M`` (set ``media_dir: M`` in the recipe; LLaMA-Factory's default
``media_dir`` is ``dataset_dir``). ``--dataset-info FILE`` also merges the entries into another
``dataset_info.json`` (``file_name`` relative to its folder when the shards lie below it, else absolute).

Work is streamed: annotation files are parsed incrementally (one record at a time, never a whole file) in two
passes. Pass 1 indexes the videos (existence, duration) and draws the sample; only video keys are held.
Pass 2 converts file by file and writes a file's shards as they fill. A finished input file is recorded in
the state file; re-running skips finished files, redoes an interrupted one from its start (its partial shards
are replaced), and produces byte-identical output. Re-running with other settings is refused unless
``--restart`` (which deletes this tool's previous output under ``OUT/llava_video_178k``).
"""

from __future__ import annotations

import glob
import json
import os
import random
import re
import shutil
from collections import Counter
from pathlib import Path

from ..files import write_text
from ..video import probe_video
from .json_records import iter_json_records

DATASET_PREFIX = "llava_video_178k"
SPLITS = ("0_2m", "2_3m")
DEFAULT_CAPS = {"0_2m": 136_000, "2_3m": 18_000}
SPLIT_BOUNDARY_S = 120.0
DURATIONS = {"0_30_s": (0.0, 30.0), "30_60_s": (30.0, 60.0), "1_2_m": (60.0, 120.0), "2_3_m": (120.0, 180.0)}
SUBSET_RE = re.compile(r"^(0_30_s|30_60_s|1_2_m|2_3_m)_(.+)$")
KIND_RE = re.compile(r"(?:^|_)(cap|oe|mc)(?:_|$)")
EXPECTED_LAYOUT = (
    "SRC/<duration>_<source>/ folders (duration one of 0_30_s, 30_60_s, 1_2_m, 2_3_m; e.g. "
    "0_30_s_academic_v0_1/, 2_3_m_youtube_v0_1/) holding *_cap_processed.json, *_oe_*qa_processed.json or "
    "*_mc_*qa_processed.json annotation files and the extracted videos, as in lmms-lab/LLaVA-Video-178K"
)
STATE_VERSION = 1
USER_ROLES = {"human": "user", "user": "user"}
ASSISTANT_ROLES = {"gpt": "assistant", "assistant": "assistant"}
PLACEHOLDER_RE = re.compile(r"\n?<(?:image|video)>\n?")


# ------------------------------------------------------------------------------------------------------ layout
def discover_annotation_files(src: str | Path, sources: list[str] | None = None) -> list[tuple[str, Path]]:
    """``[(subset, annotation_file)]`` in a fixed order; a clear error when ``src`` is not the published layout."""
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"--src {src} is not a directory; expected {EXPECTED_LAYOUT}")
    subsets = sorted(child for child in src.iterdir() if child.is_dir() and SUBSET_RE.match(child.name))
    if not subsets:
        hint = ""
        if SUBSET_RE.match(src.name):
            hint = f" ({src.name} looks like one subset folder: pass its parent {src.parent})"
        else:
            snapshots = sorted(p for p in src.glob("snapshots/*") if any(SUBSET_RE.match(c.name) for c in p.iterdir()))
            if snapshots:
                hint = f" (a Hugging Face cache folder: pass {snapshots[-1]})"
        names = ", ".join(sorted(child.name for child in src.iterdir())[:8]) or "nothing"
        raise ValueError(f"--src {src} has no LLaVA-Video-178K subset folders{hint}; found {names}; "
                         f"expected {EXPECTED_LAYOUT}")
    if sources:
        wanted = set(sources)
        known = sorted({SUBSET_RE.match(subset.name).group(2) for subset in subsets})
        unknown = wanted - set(known)
        if unknown:
            raise ValueError(f"--sources {','.join(sorted(unknown))} not found under {src}; present: {','.join(known)}")
        subsets = [subset for subset in subsets if SUBSET_RE.match(subset.name).group(2) in wanted]
    files = []
    for subset in subsets:
        for path in sorted(subset.glob("*.json")):
            if KIND_RE.search(path.stem):
                files.append((subset.name, path))
    if not files:
        raise ValueError(f"no annotation files in the subset folders of {src} "
                         f"({', '.join(s.name for s in subsets)}); expected {EXPECTED_LAYOUT}")
    return files


def annotation_kind(path: Path) -> str:
    match = KIND_RE.search(path.stem)
    return match.group(1) if match else "other"


# -------------------------------------------------------------------------------------------------- conversion
def convert_conversation(conversations) -> list[dict] | None:
    """LLaVA ``conversations`` -> LLaMA-Factory sharegpt ``messages`` with one ``<video>``; None when malformed."""
    if not isinstance(conversations, list) or not conversations:
        return None
    messages = []
    for index, turn in enumerate(conversations):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            return None
        roles = USER_ROLES if index % 2 == 0 else ASSISTANT_ROLES
        role = roles.get(turn.get("from"))
        if role is None:
            return None
        messages.append({"role": role, "content": turn["value"]})
    if messages[-1]["role"] == "user":
        messages.pop()
    if not messages:
        return None
    first = messages[0]["content"]
    match = PLACEHOLDER_RE.search(first)
    if match:
        head, tail = first[: match.start()], first[match.end():]
        token = match.group(0).replace("<image>", "<video>")
        if not head:
            token = token.lstrip("\n")
        first = head + token + PLACEHOLDER_RE.sub(_drop_placeholder, tail)
    else:
        first = "<video>\n" + first
    messages[0]["content"] = first
    for message in messages[1:]:
        message["content"] = PLACEHOLDER_RE.sub(_drop_placeholder, message["content"])
    return messages


def _drop_placeholder(match: re.Match) -> str:
    text = match.group(0)
    return "\n" if text.startswith("\n") and text.endswith("\n") else ""


def _video_of(record: dict) -> str | None:
    video = record.get("video")
    if isinstance(video, list) and len(video) == 1:
        video = video[0]
    return video if isinstance(video, str) and video else None


# ---------------------------------------------------------------------------------------------------- helpers
def _dumps(data) -> str:
    return json.dumps(data, ensure_ascii=False, indent=1, sort_keys=True) + "\n"


def _shard_text(records: list[dict]) -> str:
    return "[\n" + ",\n".join(json.dumps(record, ensure_ascii=False) for record in records) + "\n]\n"


def _write_shard(path: Path, records: list[dict], scratch: Path) -> None:
    write_text(path, _shard_text(records), scratch)


def dataset_entry(file_name: str) -> dict:
    """The dataset_info.json entry for one split (same shape as the repo's data/dataset_info.json)."""
    return {
        "file_name": file_name,
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "videos": "videos"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
    }


def merge_dataset_info(path: Path, entries: dict[str, dict], scratch: Path, remove: list[str] = ()) -> None:
    """Add/replace ``entries`` in the dataset_info.json at ``path`` (created if absent); drop ``remove`` keys."""
    info = {}
    if path.is_file():
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
        if not isinstance(info, dict):
            raise ValueError(f"{path} is not a JSON object")
    info.update(entries)
    for name in remove:
        info.pop(name, None)
    write_text(path, json.dumps(info, indent=2, ensure_ascii=False) + "\n", scratch)


def parse_cap(value: str | int | None) -> int | None:
    """``all`` / ``none`` / negative -> no cap, else a non-negative int."""
    if value is None:
        return None
    if isinstance(value, str):
        if value.strip().lower() in ("all", "none", "inf"):
            return None
        try:
            value = int(value)
        except ValueError:
            raise ValueError(f"video cap {value!r} is neither a count nor 'all'") from None
    return None if value < 0 else int(value)


# ----------------------------------------------------------------------------------------------------- main
def prepare_llava_video(
    src: str | Path,
    out: str | Path,
    *,
    dataset_info: str | Path | None = None,
    max_duration_s: float = 180.0,
    probe: bool = False,
    caps: dict[str, int | None] | None = None,
    seed: int = 0,
    sources: list[str] | None = None,
    video_roots: list[str | Path] = (),
    media_dir: str | Path | None = None,
    shard_size: int = 20_000,
    restart: bool = False,
    progress: bool = True,
) -> dict:
    """Convert LLaVA-Video-178K at ``src`` into sharegpt shards under ``out``; returns the summary (module doc)."""
    from tqdm.auto import tqdm

    if shard_size < 1:
        raise ValueError("--shard-size must be >= 1")
    src, out = Path(src).absolute(), Path(out).absolute()
    caps = {split: parse_cap(cap) for split, cap in {**DEFAULT_CAPS, **(caps or {})}.items()}
    roots = [Path(root).absolute() for root in video_roots]
    media_dir = Path(media_dir).absolute() if media_dir is not None else None
    files = discover_annotation_files(src, sources)

    work = out / DATASET_PREFIX
    state_path, selection_path = work / "prepare_state.json", work / "selection.json"
    if restart:
        for name in SPLITS:
            shutil.rmtree(work / name, ignore_errors=True)
        for path in (state_path, selection_path, work / "missing_videos.txt", work / "summary.json"):
            path.unlink(missing_ok=True)
    settings = {
        "version": STATE_VERSION,
        "src": str(src),
        "sources": sorted(sources) if sources else None,
        "max_duration_s": float(max_duration_s),
        "probe_duration": bool(probe),
        "caps": caps,
        "seed": int(seed),
        "video_roots": [str(root) for root in roots],
        "media_dir": str(media_dir) if media_dir else None,
        "shard_size": int(shard_size),
        "inputs": {_relative(path, src): path.stat().st_size for _, path in files},
    }
    state = {"settings": settings, "files": {}}
    if state_path.is_file():
        previous = json.loads(state_path.read_text(encoding="utf-8"))
        if previous.get("settings") != settings:
            changed = sorted(key for key in set(settings) | set(previous.get("settings", {}))
                             if settings.get(key) != previous.get("settings", {}).get(key))
            raise ValueError(f"{work} holds a run with other settings or inputs ({', '.join(changed)}); "
                             "pass --restart to start over, or use another --out")
        state = previous
    work.mkdir(parents=True, exist_ok=True)

    # pass 1: index videos, draw the sample (cached in selection.json)
    if selection_path.is_file() and state.get("selection_done"):
        selection = json.loads(selection_path.read_text(encoding="utf-8"))
    else:
        selection = _select(files, src, roots, max_duration_s, probe, caps, seed, progress, tqdm)
        write_text(selection_path, _dumps(selection), work)
        state["selection_done"] = True
        write_text(state_path, _dumps(state), work)
    chosen = selection["paths"]  # key -> absolute video path, selected videos only
    split_of = selection["split_of"]

    # pass 2: convert file by file; shards are named after their annotation file (subset-prefixed if ambiguous)
    names = Counter(path.stem for _, path in files)
    stems = {path: path.stem if names[path.stem] == 1 else f"{subset}__{path.stem}" for subset, path in files}
    pending = [(subset, path) for subset, path in files if _relative(path, src) not in state["files"]]
    bar = tqdm(total=sum(path.stat().st_size for _, path in pending), unit="B", unit_scale=True,
               desc="llava-video: write", disable=not progress)
    for subset, path in pending:
        relative = _relative(path, src)
        stem = stems[path]
        for split in SPLITS:  # an interrupted earlier attempt at this file
            for stale in (work / split).glob(f"{glob.escape(stem)}-[0-9][0-9][0-9][0-9][0-9].json"):
                stale.unlink()
        writer = _ShardWriter(work, stem, shard_size)
        counts = {split: Counter() for split in SPLITS}
        done_bytes = 0
        for record, read in iter_json_records(path):
            bar.update(read - done_bytes)
            done_bytes = read
            video = _video_of(record)
            if video is None:
                continue
            key = f"{subset}/{video}"
            if key not in chosen:
                continue
            messages = convert_conversation(record.get("conversations"))
            if messages is None:
                continue
            split = split_of[key]
            writer.add(split, {"messages": messages, "videos": [_media_path(chosen[key], media_dir)]})
            counts[split]["samples"] += 1
            counts[split]["qa"] += sum(message["role"] == "assistant" for message in messages)
        shards = writer.close()
        bar.update(path.stat().st_size - done_bytes)
        state["files"][relative] = {
            "subset": subset,
            "kind": annotation_kind(path),
            "shards": {split: shards[split] for split in SPLITS if shards[split]},
            "samples": {split: counts[split]["samples"] for split in SPLITS if counts[split]["samples"]},
            "qa": {split: counts[split]["qa"] for split in SPLITS if counts[split]["qa"]},
        }
        write_text(state_path, _dumps(state), work)
    bar.close()

    # outputs: dataset_info entries, missing-video report, summary
    summary = _summary(state, selection, work)
    entries = {f"{DATASET_PREFIX}_{split}": dataset_entry(f"{DATASET_PREFIX}/{split}")
               for split in SPLITS if summary["splits"][split]["samples"]}
    empty = [f"{DATASET_PREFIX}_{split}" for split in SPLITS if not summary["splits"][split]["samples"]]
    merge_dataset_info(out / "dataset_info.json", entries, work, remove=empty)
    if dataset_info is not None:
        target = Path(dataset_info).absolute()
        merge_dataset_info(target, {name: dataset_entry(_file_name_from(target.parent, work / split))
                                    for name, split in ((f"{DATASET_PREFIX}_{s}", s) for s in SPLITS)
                                    if name in entries}, work)
    write_text(work / "missing_videos.txt", "".join(f"{line}\n" for line in selection["missing"]), work)
    write_text(work / "summary.json", _dumps(summary), work)
    state["done"] = True
    write_text(state_path, _dumps(state), work)
    return summary


class _ShardWriter:
    """Buffers one annotation file's records per split; writes ``<split>/<stem>-NNNNN.json`` as they fill."""

    def __init__(self, work: Path, stem: str, shard_size: int):
        self.work, self.stem, self.shard_size = work, stem, shard_size
        self.buffers = {split: [] for split in SPLITS}
        self.shards = {split: [] for split in SPLITS}

    def add(self, split: str, record: dict) -> None:
        self.buffers[split].append(record)
        if len(self.buffers[split]) >= self.shard_size:
            self._flush(split)

    def close(self) -> dict[str, list[str]]:
        for split in SPLITS:
            if self.buffers[split]:
                self._flush(split)
        return self.shards

    def _flush(self, split: str) -> None:
        name = f"{self.stem}-{len(self.shards[split]):05d}.json"
        _write_shard(self.work / split / name, self.buffers[split], self.work)
        self.shards[split].append(f"{split}/{name}")
        self.buffers[split] = []


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _media_path(path: str, media_dir: Path | None) -> str:
    return path if media_dir is None else Path(os.path.relpath(path, media_dir)).as_posix()


def _file_name_from(dataset_dir: Path, split_dir: Path) -> str:
    try:
        return split_dir.relative_to(dataset_dir).as_posix()
    except ValueError:
        return str(split_dir)


def _resolve(video: str, subset: str, src: Path, roots: list[Path]) -> Path | None:
    candidates = [path for root in roots for path in (root / video, root / subset / video)]
    candidates += [src / subset / video, src / subset / "videos" / video, src / video]
    return next((path for path in candidates if path.is_file()), None)


def _select(files, src, roots, max_duration_s, probe, caps, seed, progress, tqdm) -> dict:
    """Pass 1: every referenced video once -> present? duration? split? then the seeded per-split sample."""
    seen: dict[str, str | None] = {}  # key -> split, or None when not eligible
    paths: dict[str, str] = {}
    missing_keys: set[str] = set()
    unreadable: list[str] = []
    too_long = malformed = no_video = 0
    samples_missing = 0
    bar = tqdm(total=sum(path.stat().st_size for _, path in files), unit="B", unit_scale=True,
               desc="llava-video: index", disable=not progress)
    for subset, path in files:
        done_bytes = 0
        low, high = DURATIONS[SUBSET_RE.match(subset).group(1)]
        for record, read in iter_json_records(path):
            bar.update(read - done_bytes)
            done_bytes = read
            video = _video_of(record)
            if video is None:
                no_video += 1
                continue
            if convert_conversation(record.get("conversations")) is None:
                malformed += 1
                continue
            key = f"{subset}/{video}"
            if key in seen:
                samples_missing += key in missing_keys
                continue
            resolved = _resolve(video, subset, src, roots)
            if resolved is None:
                seen[key] = None
                missing_keys.add(key)
                samples_missing += 1
                continue
            if probe:
                try:
                    duration = probe_video(resolved).duration
                except Exception:  # noqa: BLE001 - any decoder failure means "unusable"
                    seen[key] = None
                    unreadable.append(str(resolved))
                    continue
            else:
                duration = high
            if duration > max_duration_s:
                seen[key] = None
                too_long += 1
                continue
            if probe:
                split = "0_2m" if duration < SPLIT_BOUNDARY_S else "2_3m"
            else:
                split = "0_2m" if low < SPLIT_BOUNDARY_S else "2_3m"
            seen[key] = split
            paths[key] = str(resolved)
        bar.update(path.stat().st_size - done_bytes)
    bar.close()

    split_of, selected_paths, splits = {}, {}, {}
    for split in SPLITS:
        keys = sorted(key for key, value in seen.items() if value == split)
        cap = caps.get(split)
        chosen = keys if cap is None or cap >= len(keys) else sorted(random.Random(f"{seed}-{split}").sample(keys, cap))
        splits[split] = {"eligible_videos": len(keys), "selected_videos": len(chosen), "cap": cap}
        for key in chosen:
            split_of[key] = split
            selected_paths[key] = paths[key]
    return {
        "splits": splits,
        "split_of": split_of,
        "paths": selected_paths,
        "missing": [str(src / key) for key in sorted(missing_keys)],
        "missing_samples": samples_missing,
        "unreadable": sorted(unreadable),
        "too_long_videos": too_long,
        "malformed_samples": malformed,
        "samples_without_video": no_video,
        "referenced_videos": len(seen),
    }


def _summary(state: dict, selection: dict, work: Path) -> dict:
    splits = {}
    for split in SPLITS:
        samples = sum(entry["samples"].get(split, 0) for entry in state["files"].values())
        qa = sum(entry["qa"].get(split, 0) for entry in state["files"].values())
        shards = sum(len(entry["shards"].get(split, [])) for entry in state["files"].values())
        splits[split] = {**selection["splits"][split], "samples": samples, "qa": qa, "shards": shards,
                         "dataset": f"{DATASET_PREFIX}_{split}", "folder": str(work / split)}
    return {
        "splits": splits,
        "input_files": len(state["files"]),
        "referenced_videos": selection["referenced_videos"],
        "missing_videos": len(selection["missing"]),
        "missing_samples": selection["missing_samples"],
        "missing_report": str(work / "missing_videos.txt"),
        "unreadable_videos": len(selection["unreadable"]),
        "too_long_videos": selection["too_long_videos"],
        "malformed_samples": selection["malformed_samples"],
        "samples_without_video": selection["samples_without_video"],
    }


def format_summary(summary: dict) -> str:
    lines = ["LLaVA-Video-178K prepared:"]
    for row in summary["splits"].values():
        cap = "all" if row["cap"] is None else row["cap"]
        lines.append(f"  {row['dataset']}: {row['selected_videos']} videos (of {row['eligible_videos']} eligible, "
                     f"cap {cap}), {row['samples']} samples, {row['qa']} QA turns, {row['shards']} shards "
                     f"in {row['folder']}")
    lines.append(f"  skipped: {summary['missing_videos']} missing videos ({summary['missing_samples']} samples; "
                 f"list in {summary['missing_report']}), {summary['too_long_videos']} videos over the duration "
                 f"limit, {summary['unreadable_videos']} unreadable, {summary['malformed_samples']} malformed "
                 f"samples, {summary['samples_without_video']} samples without a video")
    return "\n".join(lines)
