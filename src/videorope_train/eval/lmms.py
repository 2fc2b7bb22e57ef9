"""lmms-eval backend: ``python -m lmms_eval --model videorope --model_args pretrained=DIR`` for a hooked (or stock)
Qwen2-VL, Qwen2.5-VL or Qwen3-VL checkpoint.

Registered through the entry point ``lmms_eval.models`` -> ``videorope`` (pyproject.toml, ``lmms_entry.py``). The checkpoint loads
through its own remote code (``load_model``), so its RoPE variant, δ and extrapolation (YaRN-V, ...) are the ones
used; lmms-eval's own ``qwen2_vl`` model would load it with the stock class and random weights (README).

Video input follows the authors' evaluation (``eval/video.py``: 2 fps, the per-video budget of the context in the
checkpoint's visual tokens, the frame floor and cap; Qwen3-VL's prompt carries each temporal patch's time from the
sampled frames' times), greedy decoding. ``context=8k|16k|32k|64k`` picks the papers' four settings (8192, 16384,
32768, 64000 tokens), or give a number of tokens; ``frames``, ``fps``, ``total_pixels``, ``min_frame_pixels`` and
``max_frame_pixels`` override single values.  Bad arguments and a missing checkpoint fail before the model loads;
a missing or undecodable video fails before anything is generated, named with every other one.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from .video import FPS, VideoReader, unreadable_videos, video_budget


def _lmms_base():
    from lmms_eval.api.model import lmms

    return lmms


class VideoRope(_lmms_base()):
    """A hooked (or stock) Qwen2-VL / Qwen2.5-VL / Qwen3-VL checkpoint in lmms-eval (generation tasks; one sample at
    a time)."""

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
        video_budget(context, total_pixels, min_frame_pixels, max_frame_pixels)  # bad values: before loading
        from .model import LoadedModel, load_model

        # an already loaded model serves several presets (scripts/bench_eval.py); lmms-eval passes a directory
        self.loaded = pretrained if isinstance(pretrained, LoadedModel) else load_model(
            pretrained, dtype=dtype, device=device, attn_implementation=attn_implementation)
        geometry = self.loaded.geometry  # the budget is in the checkpoint's visual tokens
        budget = video_budget(context, total_pixels, min_frame_pixels, max_frame_pixels, geometry.token_pixels)
        self.videos = VideoReader(budget, fps, int(frames) if frames else None, geometry)
        self.system_prompt, self.max_new_tokens = system_prompt, int(max_new_tokens)

    def _reading_ahead(self, requests, visuals_of):
        """(request, its visuals) in order, after checking every video of ``requests`` can be read (one error naming
        each file that cannot, before anything is generated); each step first starts reading the next request's
        videos."""
        requests = list(requests)
        visuals = [visuals_of(request) for request in requests]
        where = {}
        for request, items in zip(requests, visuals):
            for item in items:
                if isinstance(item, str):
                    where.setdefault(item, f"{request.args[-2]} doc {request.args[-3]}")
        problems = unreadable_videos(where)
        if problems:
            listed = "; ".join(f"{path} ({where[path]}): {why}" for path, why in problems.items())
            raise FileNotFoundError(f"videorope: {len(problems)} of {len(where)} videos cannot be read, nothing was "
                                    f"generated: {listed}")
        try:
            for index, request in enumerate(requests):
                if index + 1 < len(requests):
                    self.videos.read_ahead(visuals[index + 1])
                yield request, visuals[index]
        finally:
            self.videos.drop_pending()

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
                videos.append(self.videos(visual))
                content.append({"type": "video"})
            else:  # a PIL image
                images.append(visual)
                content.append({"type": "image"})
        content.append({"type": "text", "text": context})
        messages = ([{"role": "system", "content": self.system_prompt}] if self.system_prompt else []) + [
            {"role": "user", "content": content}]
        prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        kwargs = {"text": [prompt], "return_tensors": "pt"}
        if videos:  # frames are already at their final size (the checkpoint's multiples): no second resize
            kwargs.update(videos=[video.frames for video in videos], videos_kwargs={
                "do_resize": False, "do_sample_frames": False,
                "video_metadata": [video.metadata() for video in videos]})  # Qwen3-VL's timestamps
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
        if "mm_token_type_ids" in full:  # text: type 0 (stock Qwen3-VL places its positions by these)
            full["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(ids)], dim=1)
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
