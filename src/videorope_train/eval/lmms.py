"""lmms-eval backend for hooked checkpoints: ``python -m lmms_eval --model videorope --model_args pretrained=DIR``.

Registered through the entry point ``lmms_eval.models`` -> ``videorope`` (pyproject.toml, ``lmms_entry.py``). The checkpoint loads
through its own remote code (``load_model``), so its RoPE variant, δ and extrapolation (YaRN-V, ...) are the ones
used; lmms-eval's own ``qwen2_vl`` model would load it with the stock class and random weights (README).

Video input follows the authors' evaluation (their ``eval/model_*_qwen2_vl.py``): frames at 2 fps (at most 768,
an even count, at least 4), a per-video pixel budget ``total_pixels = (context − 512) · 28 · 28`` shared by the
frames, each frame between 144 and 768 tokens' worth of pixels (qwen_vl_utils' rule: the floor, with 5% slack,
wins over the budget on long videos), greedy decoding. ``context=8k|16k|32k|64k`` picks
the papers' four settings (8192, 16384, 32768, 64000 tokens); ``frames``, ``fps``, ``total_pixels``,
``min_frame_pixels`` and ``max_frame_pixels`` override single values.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import List, Optional, Tuple

import torch

from ..video import TOKEN_PIXELS, VideoBudget, probe_video
from .contexts import CONTEXTS
from .data import read_frames, sample_times

TEXT_RESERVE = 512  # tokens the authors keep for text: total_pixels = (context - 512) * 28 * 28
FPS, MIN_FRAMES, MAX_FRAMES = 2.0, 4, 768  # qwen_vl_utils' defaults, which the authors' scripts use
MIN_FRAME_TOKENS, MAX_FRAME_TOKENS = 144, 768


def video_budget(context: int | str, total_pixels: Optional[int] = None, min_frame_pixels: Optional[int] = None,
                 max_frame_pixels: Optional[int] = None) -> VideoBudget:
    """The authors' per-video budget for an evaluation context (tokens, or 8k/16k/32k/64k)."""
    tokens = CONTEXTS.get(str(context)) or int(context)
    if tokens <= TEXT_RESERVE:
        raise ValueError(f"context {context} leaves no room for video (the text keeps {TEXT_RESERVE} tokens)")
    return VideoBudget(total_pixels=int(total_pixels or (tokens - TEXT_RESERVE) * TOKEN_PIXELS),
                       max_frame_pixels=int(max_frame_pixels or MAX_FRAME_TOKENS * TOKEN_PIXELS),
                       min_frame_pixels=int(min_frame_pixels or MIN_FRAME_TOKENS * TOKEN_PIXELS))


def frame_count(duration: float, available: int, fps: float = FPS, frames: Optional[int] = None) -> int:
    """Frames to sample: ``frames`` if given, else ``fps`` · duration within [4, min(768, frames in the video)],
    rounded to an even count (two frames make one temporal patch)."""
    if frames is None:
        frames = round(duration * fps)
        frames = max(MIN_FRAMES, min(frames, MAX_FRAMES, max(available, MIN_FRAMES)))
    frames = max(2, int(frames))
    return frames + frames % 2


def frame_size(height: int, width: int, min_pixels: int, max_pixels: int, factor: int = 28) -> Tuple[int, int]:
    """(H, W) multiples of ``factor`` with the aspect ratio kept and the area within [min_pixels, max_pixels]
    (Qwen2-VL's smart resize)."""
    if min(height, width) <= 0:
        raise ValueError(f"frame size {height}x{width} is empty")
    new_h, new_w = max(factor, round(height / factor) * factor), max(factor, round(width / factor) * factor)
    if new_h * new_w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        new_h = max(factor, math.floor(height / beta / factor) * factor)
        new_w = max(factor, math.floor(width / beta / factor) * factor)
    elif new_h * new_w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        new_h, new_w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return new_h, new_w


def frame_pixel_limit(budget: VideoBudget, frames: int) -> float:
    """Most pixels a frame of a ``frames``-frame video may keep, by qwen_vl_utils' rule (what the authors' evaluation
    runs): the frame's share of the budget (two frames per temporal patch), at most ``max_frame_pixels``, and never
    below 1.05 x ``min_frame_pixels`` — so on long videos the per-frame floor wins over the context's budget."""
    share = budget.total_pixels / frames * 2
    return max(min(budget.max_frame_pixels, share), int(budget.min_frame_pixels * 1.05))


def video_frames(path: str, budget: VideoBudget, fps: float = FPS, frames: Optional[int] = None) -> torch.Tensor:
    """uint8 [T, 3, H, W] frames of ``path`` as the authors' evaluation feeds them."""
    import av

    info = probe_video(path)
    count = frame_count(info.duration, info.frames, fps, frames)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        height, width = stream.codec_context.height, stream.codec_context.width
    size = frame_size(height, width, budget.min_frame_pixels, frame_pixel_limit(budget, count))
    times, _ = sample_times(info, count)
    return torch.from_numpy(read_frames(path, times, size)).permute(0, 3, 1, 2).contiguous()


def _lmms_base():
    from lmms_eval.api.model import lmms

    return lmms


class VideoRope(_lmms_base()):
    """A hooked Qwen2-VL / Qwen2.5-VL checkpoint in lmms-eval (generation tasks; one sample at a time)."""

    is_simple = True

    def __init__(self, pretrained, context: str = "8k", frames: Optional[int] = None, fps: float = FPS,
                 total_pixels: Optional[int] = None, min_frame_pixels: Optional[int] = None,
                 max_frame_pixels: Optional[int] = None, device: Optional[str] = None, dtype: str = "auto",
                 attn_implementation: Optional[str] = None, batch_size: int | str = 1,
                 system_prompt: Optional[str] = None, max_new_tokens: int = 128, **unused) -> None:
        super().__init__()
        if unused:
            raise ValueError(f"videorope: unknown model_args {sorted(unused)}; known: pretrained, context, frames, "
                             "fps, total_pixels, min_frame_pixels, max_frame_pixels, device, dtype, "
                             "attn_implementation, system_prompt, max_new_tokens")
        if int(batch_size) != 1:
            raise ValueError("videorope: batch_size must be 1 (long videos; one sample fills the context)")
        from .model import LoadedModel, load_model

        # an already loaded model serves several presets (scripts/bench_eval.py); lmms-eval passes a directory
        self.loaded = pretrained if isinstance(pretrained, LoadedModel) else load_model(
            pretrained, dtype=dtype, device=device, attn_implementation=attn_implementation)
        self.budget = video_budget(context, total_pixels, min_frame_pixels, max_frame_pixels)
        self.frames, self.fps = (int(frames) if frames else None), float(fps)
        self.system_prompt, self.max_new_tokens = system_prompt, int(max_new_tokens)
        self.last_video = None  # (key, frames) of the last video read
        self.pending = {}  # key -> Future of a video being read ahead
        self.reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="videorope-video")

    def _video_key(self, path: str) -> tuple:
        stat = os.stat(path)
        return os.path.realpath(path), stat.st_size, stat.st_mtime_ns, self.budget, self.fps, self.frames

    def video(self, path: str) -> torch.Tensor:
        """uint8 [T, 3, H, W] frames of ``path`` at this backend's settings. The last video's frames are kept:
        lmms-eval hands a task's questions over in document order, and benchmarks ask several in a row about one
        video (Video-MME: three), which would otherwise decode the whole file again each time. A video read ahead
        (``read_ahead``) is taken from there."""
        key = self._video_key(path)
        if self.last_video is None or self.last_video[0] != key:
            self.last_video = None  # the old frames go before the new ones are read
            ahead = self.pending.pop(key, None)
            frames = ahead.result() if ahead else video_frames(path, self.budget, self.fps, self.frames)
            self.last_video = (key, frames)
        return self.last_video[1]

    def read_ahead(self, visuals: list) -> None:
        """Start decoding these videos on a background thread (PyAV decodes outside the GIL), so that the next
        request's decoding overlaps this request's GPU work. A file that cannot be read is left to the request
        itself, which then fails with the error it would have without reading ahead."""
        for path in visuals:
            if not isinstance(path, str):
                continue
            try:
                key = self._video_key(path)
            except OSError:
                continue
            if key not in self.pending and (self.last_video is None or self.last_video[0] != key):
                self.pending[key] = self.reader.submit(video_frames, path, self.budget, self.fps, self.frames)

    def _reading_ahead(self, requests, visuals_of):
        """(request, its visuals) in order; each step first starts reading the next request's videos."""
        requests = list(requests)
        upcoming = visuals_of(requests[0]) if requests else None
        try:
            for index, request in enumerate(requests):
                visuals = upcoming
                upcoming = visuals_of(requests[index + 1]) if index + 1 < len(requests) else None
                if upcoming:
                    self.read_ahead(upcoming)
                yield request, visuals
        finally:
            self.pending.clear()  # frames read ahead for requests that never came

    # what lmms-eval reads
    @property
    def model(self):
        return self.loaded.model

    @property
    def tokenizer(self):
        return self.loaded.tokenizer

    @property
    def batch_size(self) -> int:
        return 1

    @property
    def device(self):
        return self.loaded.input_device

    @property
    def rope(self):
        return self.loaded.rope

    def prompt_inputs(self, context: str, visuals: list):
        """The processor inputs (on the model's device) of one request: ``visuals`` (video paths, PIL images) then
        the text ``context``, in the checkpoint's chat template with the generation prompt."""
        processor = self.loaded.processor
        content, videos, images = [], [], []
        for visual in visuals:
            if isinstance(visual, str):  # a video file
                videos.append(self.video(visual))
                content.append({"type": "video"})
            else:  # a PIL image
                images.append(visual)
                content.append({"type": "image"})
        content.append({"type": "text", "text": context})
        messages = ([{"role": "system", "content": self.system_prompt}] if self.system_prompt else []) + [
            {"role": "user", "content": content}]
        prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        kwargs = {"text": [prompt], "return_tensors": "pt"}
        if videos:  # frames are already at their final size (multiples of 28): no second resize
            kwargs.update(videos=videos, videos_kwargs={"do_resize": False, "do_sample_frames": False})
        if images:
            kwargs["images"] = images
        return processor(**kwargs).to(self.device)

    @staticmethod
    def _flat(visuals) -> list:
        return [v for item in (visuals or []) for v in (item if isinstance(item, list) else [item])]

    def _doc(self, task, split, doc_id):
        return self.task_dict[task][split][doc_id]

    def _visuals_of(self, request) -> list:
        """The visuals of a request of any kind: lmms-eval puts ``doc_to_visual`` third and the document's
        (doc_id, task, split) last."""
        doc_id, task, split = request.args[-3:]
        return self._flat(request.args[2](self._doc(task, split, doc_id)))

    def _generate(self, context: str, visuals: list, gen_kwargs: Optional[dict]) -> str:
        """One answer: greedy (or sampled when the task sets a temperature), cut at the task's ``until``."""
        gen_kwargs = dict(gen_kwargs or {})
        until = gen_kwargs.pop("until", None)
        until = [until] if isinstance(until, str) else list(until or [])
        inputs = self.prompt_inputs(context, visuals)
        temperature = float(gen_kwargs.get("temperature", 0) or 0)
        generate = {"max_new_tokens": int(gen_kwargs.get("max_new_tokens", self.max_new_tokens)),
                    "do_sample": temperature > 0, "num_beams": int(gen_kwargs.get("num_beams", 1) or 1)}
        if temperature > 0:
            generate.update(temperature=temperature, top_p=float(gen_kwargs.get("top_p", 1.0) or 1.0))
        with torch.inference_mode():
            output = self.model.generate(**inputs, **generate, pad_token_id=self.tokenizer.pad_token_id)
        text = self.tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        for stop in until:
            if stop:
                text = text.split(stop)[0]
        return text

    def generate_until(self, requests) -> List[str]:
        from tqdm import tqdm

        results = []
        ordered = self._reading_ahead(requests, self._visuals_of)
        for request, visuals in tqdm(ordered, total=len(requests), disable=self.rank != 0, desc="videorope"):
            context, gen_kwargs = request.args[:2]
            text = self._generate(context, visuals, gen_kwargs)
            results.append(text)
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
        return results

    def generate_until_multi_round(self, requests) -> List[tuple]:
        """lmms-eval's multi-round protocol: round 0 answers the request's context; each later round asks the task's
        ``doc_to_text(doc, previous_output=…, round_idx=…, previous_round_info=…)`` for (visuals, context, stop,
        answers so far, info) until it signals the end. Returns each document's answers, one per round."""
        results = []
        for request, visuals in self._reading_ahead(requests, self._visuals_of):
            context, gen_kwargs, _, doc_to_text, doc_id, task, split = request.args
            doc = self._doc(task, split, doc_id)
            answers, info, round_idx = [], None, 0
            while True:
                if round_idx:
                    visuals, context, stop, answers, info = doc_to_text(
                        doc, previous_output=list(answers), round_idx=round_idx, previous_round_info=info)
                    answers = list(answers)
                    if stop:
                        break
                    visuals = self._flat(visuals)
                answers.append(self._generate(context, visuals, gen_kwargs).strip())
                round_idx += 1
            results.append(tuple(answers))
        return results

    @torch.inference_mode()
    def continuation_score(self, inputs, target: List[int]) -> Tuple[float, bool]:
        """(log P(target | inputs) under teacher forcing, whether greedy decoding produces it): one forward over the
        prompt's processor ``inputs`` with the ``target`` token ids appended."""
        ids = torch.tensor([target], device=self.device)
        full = dict(inputs)
        full["input_ids"] = torch.cat([inputs["input_ids"], ids], dim=1)
        full["attention_mask"] = torch.ones_like(full["input_ids"])
        logits = self.model(**full, logits_to_keep=len(target) + 1).logits[0, :-1].float()
        log_probs = logits.log_softmax(-1).gather(-1, ids[0, :, None])[:, 0]
        return float(log_probs.sum()), bool((logits.argmax(-1) == ids[0]).all())

    def loglikelihood(self, requests) -> List[Tuple[float, bool]]:
        """lmms-eval's loglikelihood requests; the continuation is tokenised on its own and appended to the prompt's
        ids (no merge across the boundary)."""
        results = []
        for request, visuals in self._reading_ahead(requests, self._visuals_of):
            context, doc_to_target, _, doc_id, task, split = request.args
            doc = self._doc(task, split, doc_id)
            continuation = doc_to_target if isinstance(doc_to_target, str) else doc_to_target(doc)
            target = self.tokenizer(continuation, add_special_tokens=False)["input_ids"]
            if not target:
                raise ValueError(f"videorope: {task} doc {doc_id}: the continuation {continuation!r} has no tokens")
            results.append(self.continuation_score(self.prompt_inputs(context, visuals), target))
            self.cache_hook.add_partial("loglikelihood", (context, continuation), results[-1])
        return results
