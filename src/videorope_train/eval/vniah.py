"""V-NIAH / V-NIAH-D: find a needle frame in a long haystack video, on spliced vision embeddings.

Protocol (LongVA's V-NIAH; VideoRoPE's V-NIAH-D, see ``shared/spec/VIDEOROPE.md``):

* haystack frames are sampled from one long video; every frame is encoded **once** by the model's own
  vision tower as an image of a fixed size (``frame_size``; 252×448 → 9×16 = 144 tokens for Qwen2-VL) and
  cached on disk, and so are the needle and distractor images (resized to the same size: a needle is just
  another frame);
* a cell (N frames, depth d) inserts the needle before haystack frame ⌊d·N⌋ (LongVA's ``int(depth *
  num_frames)``); V-NIAH-D also inserts the needle's distractor so that ``gap`` (200) haystack frames lie
  between the two, on a side where it fits (random side when both fit, none when neither does — VideoRoPE's
  rule, with a deterministic per-cell draw so that runs are reproducible and resumable);
* the sequence is the model's chat template around ``<|vision_start|>`` + the frames as one video block with
  **one temporal index per frame** (``video_grid_thw = [[F, h, w]]``) + ``<|vision_end|>`` + question, then the
  answer tokens; positions come from the checkpoint's own ``get_rope_index`` (variant, δ, ...), the model runs
  in eval mode, so the checkpoint's extrapolation (YaRN-V, ...) applies;
* score: teacher-forced exact match — 1 iff the argmax at every answer position is the answer token;
  a cell is the mean over needles, the headline the mean over cells.

Results: ``OUT/cells/len{N}_depth{d}.json`` per cell (existing cells are skipped: resumable), ``OUT/summary.json``
(average), ``OUT/heatmap.png`` (length × depth); embeddings in ``OUT/cache`` (or ``cache_dir``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ..rope import RopeConfig, get_rope_index
from .data import Needle, haystack_frames, load_image, load_needles, needles_fingerprint, resize_rgb

NEEDLE = -1  # frame_sequence entries: >= 0 haystack frame index, NEEDLE / DISTRACTOR the inserted images
DISTRACTOR = -2
TASKS = ("vniah", "vniah-d")
RUN_RECORD = "run.json"


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


def cell_name(num_frames: int, depth: float) -> str:
    return f"len{num_frames}_depth{depth:g}"


# ------------------------------------------------------------------------------------------------ scoring


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


# ------------------------------------------------------------------------------------------------ the model


@dataclass
class LoadedModel:
    """A Qwen2-VL (hooked or stock) with its processor, and what the harness needs to know about it."""

    model: torch.nn.Module
    processor: object
    path: str

    @property
    def config(self):
        return self.model.config

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def rope(self) -> RopeConfig:
        """The checkpoint's RoPE settings; a stock (un-hooked) Qwen2-VL is M-RoPE."""
        rope = getattr(self.model, "rope", None)
        return rope if isinstance(rope, RopeConfig) else RopeConfig("mrope")

    @property
    def hooked(self) -> bool:
        return isinstance(getattr(self.model, "rope", None), RopeConfig)

    @property
    def input_device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def vision_device(self) -> torch.device:
        return next(self.model.model.visual.parameters()).device

    def patch_grid(self, frame_size: Tuple[int, int]) -> Tuple[int, int, int]:
        """(grid_h, grid_w, tokens per frame) of a frame of ``frame_size`` = (H, W) pixels."""
        vision = self.config.vision_config
        factor = vision.patch_size * vision.spatial_merge_size
        height, width = frame_size
        if height % factor or width % factor or height < factor or width < factor:
            raise ValueError(
                f"frame size {height}x{width} must be a positive multiple of patch_size*spatial_merge_size = {factor} "
                f"on both sides (252x448 gives Qwen2-VL's 9x16 = 144 tokens per frame)"
            )
        grid_h, grid_w = height // vision.patch_size, width // vision.patch_size
        return grid_h, grid_w, grid_h * grid_w // vision.spatial_merge_size**2

    def positions(self, input_ids, video_grid_thw, attention_mask=None) -> torch.Tensor:
        """[3, B, L] position ids of the checkpoint's own variant (its ``get_rope_index``)."""
        if self.hooked:
            return self.model.get_rope_index(input_ids, video_grid_thw=video_grid_thw, attention_mask=attention_mask)[0]
        config = self.config
        return get_rope_index(
            RopeConfig("mrope"), input_ids, None, video_grid_thw, attention_mask,
            spatial_merge_size=config.vision_config.spatial_merge_size, image_token_id=config.image_token_id,
            video_token_id=config.video_token_id, vision_start_token_id=config.vision_start_token_id,
        )[0]


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(
    path: str | Path,
    dtype: str = "auto",
    device: Optional[str] = None,
    device_map: Optional[str] = None,
    attn_implementation: Optional[str] = None,
    processor: Optional[str] = None,
) -> LoadedModel:
    """Load a (hooked or stock) Qwen2-VL directory for evaluation, in eval mode.

    dtype ``auto``: bfloat16 on GPU, float32 on CPU.  ``device_map="auto"`` spreads the layers over every
    visible GPU (weights and KV cache split; see the README for long contexts).  attn_implementation default:
    ``flash_attention_2`` when on GPU and installed, else ``sdpa``.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    device = device or default_device()
    on_gpu = device_map is not None or str(device).startswith("cuda")
    if dtype == "auto":
        torch_dtype = torch.bfloat16 if on_gpu else torch.float32
    else:
        torch_dtype = getattr(torch, dtype)
    if attn_implementation is None:
        attn_implementation = "sdpa"
        if on_gpu:
            try:
                import flash_attn  # noqa: F401

                attn_implementation = "flash_attention_2"
            except ImportError:
                pass
    model = AutoModelForImageTextToText.from_pretrained(
        str(path), trust_remote_code=True, dtype=torch_dtype, attn_implementation=attn_implementation,
        device_map=device_map or device,
    )
    if not hasattr(getattr(model, "model", None), "visual"):
        raise ValueError(f"{path} is not a Qwen2-VL model (no vision tower at model.model.visual)")
    model.eval()
    return LoadedModel(model, AutoProcessor.from_pretrained(str(processor or path), trust_remote_code=True), str(path))


# ------------------------------------------------------------------------------------------------ embeddings


def vision_fingerprint(model: torch.nn.Module) -> str:
    """A cheap identity of the vision tower's weights (names, shapes and a strided sample of every tensor):
    checkpoints trained with a frozen tower share it, so they share cached embeddings."""
    digest = hashlib.sha1()
    for name, tensor in model.model.visual.state_dict().items():
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // 64)
        sample = flat[::step][:64].float().cpu()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}:".encode())
        digest.update(sample.numpy().tobytes())
        digest.update(f"{float(flat.float().sum()):.6e}".encode())
    return digest.hexdigest()


@torch.inference_mode()
def encode_frames(lm: LoadedModel, frames, frame_size: Tuple[int, int], batch: int = 32,
                  progress: Optional[Callable[[int], None]] = None) -> torch.Tensor:
    """Vision-tower embeddings [n, tokens_per_frame, D] (CPU, model dtype) of uint8 frames [n, H, W, 3].

    Each frame is one image (T = 1) at exactly ``frame_size`` through the checkpoint's image processor and
    ``get_image_features`` — what the model's own image path computes for it.
    """
    grid_h, grid_w, tokens = lm.patch_grid(frame_size)
    height, width = frame_size
    processor = lm.processor.image_processor
    outputs = []
    for start in range(0, len(frames), batch):
        chunk = [frames[k] for k in range(start, min(start + batch, len(frames)))]
        inputs = processor(images=chunk, min_pixels=height * width, max_pixels=height * width, return_tensors="pt")
        grid = inputs["image_grid_thw"]
        if not bool((grid == torch.tensor([1, grid_h, grid_w])).all()):
            raise ValueError(f"the image processor resized {height}x{width} frames to grid {grid[0].tolist()}")
        device = lm.vision_device
        pixels = inputs["pixel_values"].to(device)
        features = lm.model.model.get_image_features(pixels, image_grid_thw=grid.to(device)).pooler_output
        outputs.append(torch.stack([f.reshape(tokens, -1) for f in features]).cpu())
        if progress is not None:
            progress(len(chunk))
    return torch.cat(outputs)


def _cached(path: Path, compute: Callable[[], dict]) -> dict:
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=True)
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(value, tmp)
    os.replace(tmp, path)
    return value


def _key(**parts) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


# ------------------------------------------------------------------------------------------------ sequences


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
              tokens_per_frame: int, gap: int = 200, seed: int = 0) -> Item:
    index = needle_frame_index(depth, num_frames)
    side = None
    if task == "vniah-d":
        side = distractor_side(index, num_frames, gap, distractor_draw(seed, num_frames, depth, needle))
    sources = frame_sequence(num_frames, index, side, gap)
    ids = list(prompt.prefix) + [lm.config.video_token_id] * (len(sources) * tokens_per_frame)
    ids += list(prompt.suffix) + list(prompt.answer)
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


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, L], left-padded
    attention_mask: Optional[torch.Tensor]  # None when nothing is padded
    video_grid_thw: torch.Tensor  # [B, 3]
    position_ids: torch.Tensor  # [3, B, L]
    inputs_embeds: torch.Tensor  # [B, L, D]
    answers: List[Tuple[int, ...]]


@torch.inference_mode()
def assemble_batch(lm: LoadedModel, items: Sequence[Item], frames_of: Callable[[Item], torch.Tensor],
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
    head_dim = hidden // heads
    patch, merge = vision["patch_size"], vision["spatial_merge_size"]
    height, width = settings.frame_size
    tokens_per_frame = (height // patch) * (width // patch) // merge**2
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


def _model_identity(path: str | Path) -> dict:
    path = Path(path)
    files = {}
    for file in sorted(path.iterdir()) if path.is_dir() else []:
        if file.suffix in (".safetensors", ".bin", ".json") and file.is_file():
            stat = file.stat()
            files[file.name] = [stat.st_size, stat.st_mtime_ns] if file.suffix != ".json" else hashlib.sha1(
                file.read_bytes()).hexdigest()
    return {"path": str(path.resolve()), "files": files}


def _write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1) + "\n")
    os.replace(tmp, path)


def _check_run_record(out: Path, record: dict, overwrite: bool) -> None:
    path = out / RUN_RECORD
    if overwrite:
        shutil.rmtree(out / "cells", ignore_errors=True)
    elif path.is_file():
        old = json.loads(path.read_text())
        if old != record and any((out / "cells").glob("*.json")):
            changed = sorted(k for k in set(old) | set(record) if old.get(k) != record.get(k))
            raise ValueError(
                f"{out} holds V-NIAH cells computed with other settings (changed: {', '.join(changed)}); use another "
                f"--out, or --overwrite to discard them"
            )
    _write_json(path, record)


def summarize(out: str | Path, lengths: Sequence[int], depths: Sequence[float], extra: Optional[dict] = None) -> dict:
    """summary.json + heatmap.png of the cells of ``lengths`` × ``depths`` present in ``out/cells``."""
    from .plot import save_heatmap

    out = Path(out)
    cells, missing = [], []
    for n in lengths:
        for d in depths:
            path = out / "cells" / f"{cell_name(n, d)}.json"
            if path.is_file():
                cells.append({"frames": n, "depth": d, "score": json.loads(path.read_text())["score"]})
            else:
                missing.append(cell_name(n, d))
    average = sum(c["score"] for c in cells) / len(cells) if cells else None
    summary = {
        **(extra or {}),
        "lengths": list(lengths),
        "depths": list(depths),
        "average": average,
        "complete": not missing,
        "num_cells": len(cells),
        "missing": missing,
        "cells": cells,
        "heatmap": "heatmap.png",
    }
    _write_json(out / "summary.json", summary)
    save_heatmap(out / "heatmap.png", summary, title=(extra or {}).get("name"))
    return summary


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
    _check_run_record(out, record, overwrite)
    extra = {"name": name, "task": task, "model": str(model_path), "frame_size": list(settings.frame_size),
             "distractor_gap": settings.distractor_gap if task == "vniah-d" else None}
    pending = [(n, d) for n in lengths for d in depths if not (out / "cells" / f"{cell_name(n, d)}.json").is_file()]
    previous = out / "summary.json"
    if previous.is_file():  # what only a loaded model tells, kept from the run that computed the cells
        old = json.loads(previous.read_text())
        extra.update({k: old[k] for k in ("tokens_per_frame", "rope") if k in old})
    if not pending:
        return {**summarize(out, lengths, depths, extra), "computed_cells": 0}

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
                               settings.seed) for d in cells for k in range(len(needle_list))]
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
                        entries = results[item.depth]
                        score = sum(e["correct"] for e in entries) / len(entries)
                        _write_json(out / "cells" / f"{cell_name(num_frames, item.depth)}.json", {
                            "frames": num_frames, "depth": item.depth, "task": task, "score": score,
                            "needles": entries})
                        computed += 1
                bar.update(len(chunk))
    finally:
        bar.close()
    return {**summarize(out, lengths, depths, extra), "computed_cells": computed}
