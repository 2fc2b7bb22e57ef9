"""`check-data`: go through every sample of a recipe's datasets the way training will, before the GPUs do.

Per sample, with LLaMA-Factory's own converter, template, mm plugin and supervised encoder (so media paths,
frame sampling, pixel limits and truncation are exactly the training run's):

- ``empty``     — a conversation without a prompt or a response (LLaMA-Factory drops or crashes on these);
- ``missing``   — an image / video file that does not exist;
- ``corrupt``   — a file that cannot be decoded (PyAV / PIL error);
- ``truncated`` — visual tokens cut by ``cutoff_len``: training would fail with "video features and video
  tokens do not match" (LLaMA-Factory issue 7376);
- ``error``     — anything else the pipeline raised.

Prints a table, writes ``report.json`` and a histogram ``tokens.png`` of tokens per sample, and exits 1 when
any sample would crash training.  Samples are checked in parallel worker processes.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import Counter
from pathlib import Path
from typing import Iterable, Optional

from ..files import write_json
from ..recipe import load_recipe
from .json_records import iter_json_records

PROBLEMS = ("empty", "missing", "corrupt", "truncated", "error")
_WORKER: dict = {}


def _pipeline(args: dict):
    """LLaMA-Factory's tokenizer, processor, template and supervised encoder for a recipe."""
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.data.processor import SupervisedDatasetProcessor
    from llamafactory.hparams.parser import _parse_train_args
    from llamafactory.model import load_tokenizer

    model_args, data_args, _, _, _ = _parse_train_args(args)
    tokenizer_module = load_tokenizer(model_args)
    tokenizer, processor = tokenizer_module["tokenizer"], tokenizer_module["processor"]
    template = get_template_and_fix_tokenizer(tokenizer, data_args)
    encoder = SupervisedDatasetProcessor(template=template, tokenizer=tokenizer, processor=processor,
                                         data_args=data_args)
    return data_args, tokenizer, processor, template, encoder


def _init_worker(args: dict, one_thread: bool = True) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    if one_thread:  # a pool worker: the workers share the CPUs
        torch.set_num_threads(1)
    _WORKER["pipeline"] = _pipeline(args)
    _WORKER["converters"] = {}
    _decode_once(_WORKER["pipeline"][3].mm_plugin)


def _decode_once(plugin) -> None:
    """Make this worker's plugin decode each media set once.

    A sample is decoded here to catch corrupt files, and again inside LLaMA-Factory's token counting (fully,
    when the video processor applies a per-video budget); LLaVA-Video also has ~9 QA per video.  Only the
    grids (and Qwen3-VL's video metadata, its timestamps) are kept for repeats — all that token counting reads.
    """
    decode, cache = plugin._get_mm_inputs, {}

    def cached(images, videos, audios, processor):
        key = tuple(_media_paths(images) + _media_paths(videos))
        if key not in cache:
            try:
                cache[key] = {k: v for k, v in decode(images, videos, audios, processor).items()
                              if k.endswith("grid_thw") or k == "video_metadata"}  # Qwen3-VL's timestamps read it
            except Exception as error:  # corrupt media: remembered, re-raised for every sample using it
                cache[key] = error
        if isinstance(cache[key], Exception):
            raise cache[key]
        return cache[key]

    plugin._get_mm_inputs = cached


def _converter(name, dataset_attr):
    from llamafactory.data.converter import get_dataset_converter

    key = name
    if key not in _WORKER["converters"]:
        data_args = _WORKER["pipeline"][0]
        _WORKER["converters"][key] = get_dataset_converter(dataset_attr.formatting, dataset_attr, data_args)
    return _WORKER["converters"][key]


def _media_paths(values) -> list:
    paths = []
    for value in values or []:
        paths.extend(value if isinstance(value, list) else [value])
    return [p for p in paths if isinstance(p, str)]


def check_sample(task) -> dict:
    """Check one sample; ``task`` = (dataset name, dataset_attr, index, example)."""
    name, dataset_attr, index, example = task
    data_args, tokenizer, processor, template, encoder = _WORKER["pipeline"]
    result = {"dataset": name, "index": index, "id": example.get("id"), "status": "ok"}
    try:
        converted = _converter(name, dataset_attr)(example)
    except Exception as error:  # malformed record
        return {**result, "status": "error", "detail": f"cannot convert: {error!r}"}
    prompt, response = converted["_prompt"], converted["_response"]
    images, videos = converted["_images"] or [], converted["_videos"] or []
    if not prompt or not response or any(not m.get("content", "").strip() for m in prompt + response
                                         if m.get("role") != "assistant"):
        return {**result, "status": "empty", "detail": "no prompt or no response (or an empty turn)"}
    missing = [p for p in _media_paths(images) + _media_paths(videos) if not os.path.isfile(p)]
    if missing:
        return {**result, "status": "missing", "detail": missing}
    plugin = template.mm_plugin
    try:
        mm_inputs = plugin._get_mm_inputs(images, videos, [], processor)  # decodes every frame (once per media)
    except Exception as error:
        return {**result, "status": "corrupt", "detail": f"{_media_paths(images) + _media_paths(videos)}: {error!r}"}
    try:
        input_ids, _ = encoder._encode_data_example(prompt, response, converted["_system"], converted["_tools"],
                                                     images, videos, [])
        messages = plugin.process_messages(prompt + response, images, videos, [], processor)
        full_length = sum(len(s) + len(t) for s, t in template.encode_multiturn(tokenizer, messages,
                                                                               converted["_system"],
                                                                               converted["_tools"]))
        merge = getattr(processor.image_processor, "merge_size", 2) ** 2
        visual = {"image": int(mm_inputs["image_grid_thw"].prod(-1).sum()) // merge if images else 0,
                  "video": int(mm_inputs["video_grid_thw"].prod(-1).sum()) // merge if videos else 0}
        token_ids = {"image": tokenizer.convert_tokens_to_ids(plugin.image_token or "<|image_pad|>"),
                     "video": tokenizer.convert_tokens_to_ids(plugin.video_token or "<|video_pad|>")}
    except Exception as error:
        return {**result, "status": "error", "detail": repr(error)}
    kept = {kind: sum(1 for t in input_ids if t == token_ids[kind]) for kind in visual}
    result.update(tokens=full_length, visual_tokens=visual["image"] + visual["video"])
    if kept != visual:
        result.update(status="truncated", detail=f"{full_length} tokens > cutoff_len {data_args.cutoff_len}: "
                                                 f"visual tokens kept {kept} of {visual}")
    return result


def _load_examples(dataset_attr, dataset_dir: str) -> Iterable[tuple[int, dict]]:
    if dataset_attr.load_from != "file":
        raise ValueError(f"dataset {dataset_attr.dataset_name}: check-data reads local files only (load_from=file)")
    path = Path(dataset_dir) / dataset_attr.dataset_name
    if not path.exists():
        raise FileNotFoundError(f"dataset file {path} does not exist")
    files = sorted(p for p in path.iterdir() if p.suffix in (".json", ".jsonl")) if path.is_dir() else [path]
    index = 0
    for file in files:
        for record, _ in iter_json_records(file):  # streamed: a 1.3M-sample dataset is never held in memory
            for column in ("system", "tools", "images", "videos", "audios"):  # as `datasets` fills absent columns
                key = getattr(dataset_attr, column, None)
                if key and key not in record:
                    record[key] = None
            yield index, record
            index += 1


def check_data(recipe: str | Path, datasets: Optional[list[str]] = None, overrides: Iterable[str] = (),
               out: str | Path = "data_check", workers: Optional[int] = None, limit: Optional[int] = None) -> dict:
    """Check the recipe's datasets (or ``datasets``) with ``workers`` processes (0: in this one; None: one per usable
    CPU); returns the report dict (also written to ``out``)."""
    from llamafactory.data.parser import get_dataset_list

    args = load_recipe(recipe, overrides)
    if datasets:
        args["dataset"] = ",".join(datasets)
    names = [name.strip() for name in str(args["dataset"]).split(",")]
    dataset_dir = args.get("dataset_dir", "data")

    def tasks():  # streamed to the workers: a 1.3M-sample dataset is never held in memory at once
        for name, attr in zip(names, get_dataset_list(names, dataset_dir)):
            for index, example in _load_examples(attr, dataset_dir):
                if limit is not None and index >= limit:
                    break
                yield name, attr, index, example

    from tqdm import tqdm

    _pipeline(args)  # fail here, once, on a bad model / template / processor (a failing pool initializer respawns)

    if workers is None:
        workers = usable_cpus()
    if workers == 0:  # in this process (small datasets, debugging, tests): no interpreter start-up per worker
        _init_worker(args, one_thread=False)
        results = [check_sample(task) for task in tqdm(tasks(), desc="check-data", unit="sample")]
    else:
        context = multiprocessing.get_context("spawn")  # fresh interpreters: no inherited torch threads or locks
        with context.Pool(workers, initializer=_init_worker, initargs=(args,)) as pool:
            results = list(tqdm(pool.imap(check_sample, tasks(), chunksize=16), desc="check-data", unit="sample"))
    report = _report(results, args)
    _write(report, results, Path(out), int(args.get("cutoff_len", 2048)))
    return report


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity on Linux; the machine's count where there is none, e.g. macOS)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _report(results: list[dict], args: dict) -> dict:
    counts = Counter(r["status"] for r in results)
    tokens = sorted(r["tokens"] for r in results if "tokens" in r)
    stats = {}
    if tokens:
        stats = {"min": tokens[0], "median": tokens[len(tokens) // 2], "p99": tokens[int(0.99 * (len(tokens) - 1))],
                 "max": tokens[-1]}
    return {
        "recipe_dataset": args["dataset"],
        "cutoff_len": args.get("cutoff_len"),
        "samples": len(results),
        "counts": {status: counts.get(status, 0) for status in ("ok", *PROBLEMS)},
        "tokens": stats,
        "visual_tokens": {"max": max((r["visual_tokens"] for r in results if "visual_tokens" in r), default=0)},
        "problems": [r for r in results if r["status"] != "ok"],
        "would_crash": any(counts.get(status, 0) for status in PROBLEMS),
    }


def _write(report: dict, results: list[dict], out: Path, cutoff_len: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "report.json", report, default=str)
    tokens = [r["tokens"] for r in results if "tokens" in r]
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.hist(tokens or [0], bins=50)
    axis.axvline(cutoff_len, color="red", linestyle="--", label=f"cutoff_len {cutoff_len}")
    axis.set_xlabel("tokens per sample (untruncated)")
    axis.set_ylabel("samples")
    axis.legend()
    figure.tight_layout()
    figure.savefig(out / "tokens.png", dpi=100)
    plt.close(figure)


def format_table(report: dict) -> str:
    lines = [f"{'status':10s} {'samples':>8s}"]
    lines += [f"{status:10s} {count:8d}" for status, count in report["counts"].items()]
    if report["tokens"]:
        t = report["tokens"]
        lines.append(f"tokens/sample: min {t['min']}  median {t['median']}  p99 {t['p99']}  max {t['max']}  "
                     f"(cutoff_len {report['cutoff_len']})")
    for problem in report["problems"][:20]:
        lines.append(f"  {problem['status']:9s} {problem['dataset']}[{problem['index']}]"
                     f"{' id=' + str(problem['id']) if problem.get('id') is not None else ''}: {problem.get('detail')}")
    if len(report["problems"]) > 20:
        lines.append(f"  ... {len(report['problems']) - 20} more in report.json")
    lines.append("training would crash on these samples" if report["would_crash"] else "all samples OK")
    return "\n".join(lines)
