"""Evaluation's video path, for every harness: the authors' sampling policy, probing, decoding, read-ahead.

The policy is the authors' evaluation (their ``eval/model_*_qwen2_vl.py``, i.e. qwen_vl_utils' defaults): frames at
2 fps (at most 768, an even count, at least 4), a per-video budget of ``context − 512`` visual tokens shared by the
frames, each frame between 144 and 768 tokens' worth of pixels (the floor, with 5% slack, wins over the budget on long
videos), sized by the checkpoint's own smart resize (transformers'): a token is ``VideoGeometry.token_pixels``
pixels (28·28 for Qwen2-VL, 32·32 for Qwen3-VL, whose video processor bounds the whole video's pixels rather than one
frame's).  ``read_video`` opens a file once: probe, size and decode, and says when each frame was taken (Qwen3-VL
writes those times into the prompt).  ``VideoReader`` keeps the last video's frames and reads the next ones ahead on
a thread.  V-NIAH's haystacks are sampled here too (``haystack_frames``: a fixed frame size, evenly or at a fixed
rate).

Nothing of lmms-eval is imported: the lmms-eval backend (``lmms.py``), V-NIAH, V-RULER and its stack share this.
"""

from __future__ import annotations

import math
import os
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..video import TOKEN_PIXELS, VideoBudget, VideoInfo, video_info
from .data import resize_rgb

CONTEXTS = {"8k": 8192, "16k": 16384, "32k": 32768, "64k": 64000}  # the papers' evaluation contexts
TEXT_RESERVE = 512  # tokens the authors keep for text: total_pixels = (context - 512) * token pixels
FPS, MIN_FRAMES, MAX_FRAMES = 2.0, 4, 768  # qwen_vl_utils' defaults, which the authors' scripts use
MIN_FRAME_TOKENS, MAX_FRAME_TOKENS = 144, 768


@dataclass(frozen=True)
class VideoGeometry:
    """How a checkpoint cuts a video into visual tokens (``LoadedModel.geometry`` reads it from the checkpoint).

    ``factor``: pixels of a token's side, patch_size · spatial_merge_size (Qwen2-VL 14·2 = 28, Qwen3-VL 16·2 = 32);
    ``temporal_patch``: frames per temporal patch; ``whole_video``: the video processor's min/max pixels bound the
    whole video — frames rounded up to whole temporal patches × frame pixels (Qwen3-VL) — not one frame (Qwen2-VL).
    """

    factor: int = 28
    temporal_patch: int = 2
    whole_video: bool = False

    @property
    def token_pixels(self) -> int:
        return self.factor * self.factor


QWEN2_VL = VideoGeometry()  # also Qwen2.5-VL


def context_tokens(context: int | str) -> int:
    """Tokens of an evaluation context: one of the papers' presets (8k, 16k, 32k, 64k) or a token count."""
    tokens = CONTEXTS.get(str(context).strip().lower())
    if tokens is None:
        try:
            tokens = int(str(context).strip())
        except ValueError:
            raise ValueError(f"context={context!r} is neither one of the papers' contexts "
                             f"({', '.join(CONTEXTS)}) nor a number of tokens (e.g. 12000)") from None
    if tokens <= TEXT_RESERVE:
        raise ValueError(f"context {context} leaves no room for video (the text keeps {TEXT_RESERVE} tokens)")
    return tokens


def video_budget(context: int | str, total_pixels: Optional[int] = None, min_frame_pixels: Optional[int] = None,
                 max_frame_pixels: Optional[int] = None, token_pixels: int = TOKEN_PIXELS) -> VideoBudget:
    """The authors' per-video budget for an evaluation context (tokens, or 8k/16k/32k/64k), in pixels of a model
    whose visual token covers ``token_pixels`` (``VideoGeometry.token_pixels``); explicit pixel values win."""
    default = VideoBudget.of_tokens(token_pixels, context_tokens(context) - TEXT_RESERVE, MAX_FRAME_TOKENS,
                                    MIN_FRAME_TOKENS)
    return VideoBudget(total_pixels=int(total_pixels or default.total_pixels),
                       max_frame_pixels=int(max_frame_pixels or default.max_frame_pixels),
                       min_frame_pixels=int(min_frame_pixels or default.min_frame_pixels))


def frame_count(duration: float, available: int, fps: float = FPS, frames: Optional[int] = None) -> int:
    """Frames to sample: ``frames`` if given, else ``fps`` · duration within [4, min(768, frames in the video)],
    rounded to an even count (two frames make one temporal patch)."""
    if frames is None:
        frames = round(duration * fps)
        frames = max(MIN_FRAMES, min(frames, MAX_FRAMES, max(available, MIN_FRAMES)))
    frames = max(2, int(frames))
    return frames + frames % 2


def frame_size(height: int, width: int, min_pixels: float, max_pixels: float, geometry: VideoGeometry = QWEN2_VL,
               frames: int = 2) -> Tuple[int, int]:
    """(H, W) multiples of ``geometry.factor`` with the aspect ratio kept and a frame's area within [min_pixels,
    max_pixels]: the checkpoint's smart resize, transformers' own — Qwen2-VL's per frame; for a ``whole_video``
    geometry Qwen3-VL's video one, its bounds being those per-frame ones times the ``frames`` of the video rounded
    up to whole temporal patches (what the budget video processor of ``prepare-model --video-budget`` passes it)."""
    if min(height, width) <= 0:
        raise ValueError(f"frame size {height}x{width} is empty")
    if geometry.whole_video:
        from transformers.models.qwen3_vl.video_processing_qwen3_vl import smart_resize as video_resize

        patch = geometry.temporal_patch
        padded = -(-frames // patch) * patch
        return tuple(video_resize(frames, height, width, temporal_factor=patch, factor=geometry.factor,
                                  min_pixels=min_pixels * padded, max_pixels=max_pixels * padded))
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    return tuple(smart_resize(height, width, factor=geometry.factor, min_pixels=min_pixels, max_pixels=max_pixels))


def frame_pixel_limit(budget: VideoBudget, frames: int) -> float:
    """Most pixels a frame of a ``frames``-frame video may keep, by qwen_vl_utils' rule (what the authors' evaluation
    runs): the frame's share of the budget (two frames per temporal patch), at most ``max_frame_pixels``, and never
    below 1.05 x ``min_frame_pixels`` — so on long videos the per-frame floor wins over the context's budget."""
    share = budget.total_pixels / frames * 2
    return max(min(budget.max_frame_pixels, share), int(budget.min_frame_pixels * 1.05))


class SampledVideo(NamedTuple):
    frames: torch.Tensor  # uint8 [T, 3, H, W]
    times: List[float]  # when each frame was taken (s)
    info: VideoInfo  # the file's

    def metadata(self):
        """transformers' ``VideoMetadata`` of the frames (Qwen3-VL's processor writes each temporal patch's time
        from it; ``frames_indices`` are the sample times in the file's frames, fractional: times / fps)."""
        from transformers.video_utils import VideoMetadata

        return VideoMetadata(total_num_frames=self.info.frames, fps=self.info.fps, duration=self.info.duration,
                             height=self.info.height, width=self.info.width,
                             frames_indices=[t * self.info.fps for t in self.times])


def read_video(path: Union[str, Path], budget: VideoBudget, fps: float = FPS, frames: Optional[int] = None,
               geometry: VideoGeometry = QWEN2_VL) -> SampledVideo:
    """``path``'s frames as the authors' evaluation feeds them to a checkpoint of ``geometry``, with their times
    (the file opened once)."""
    import av

    with av.open(str(path)) as container:
        info = video_info(container, path)
        count = frame_count(info.duration, info.frames, fps, frames)
        size = frame_size(info.height, info.width, budget.min_frame_pixels, frame_pixel_limit(budget, count),
                          geometry, count)
        times, _ = sample_times(info, count)
        pixels = torch.from_numpy(decode_frames(container, times, size, path)).permute(0, 3, 1, 2).contiguous()
        return SampledVideo(pixels, times, info)


def unreadable_videos(paths: Iterable[str]) -> Dict[str, str]:
    """{path: why} for each file that does not exist or whose first frame cannot be decoded (each checked once)."""
    import av

    problems = {}
    for path in dict.fromkeys(paths):
        if not os.path.isfile(path):
            problems[path] = "no such file"
            continue
        try:
            with av.open(str(path)) as container:
                video_info(container, path)
                next(container.decode(video=0))
        except StopIteration:
            problems[path] = "no frame could be decoded"
        except Exception as error:  # noqa: BLE001 -- PyAV raises many kinds; each is "undecodable" here
            problems[path] = f"{type(error).__name__}: {error}"
    return problems


class VideoReader:
    """Videos (``SampledVideo``) at one sampling setting for one checkpoint's ``geometry``, each decoded once.

    The last video's frames are kept: benchmarks ask several questions in a row about one video (Video-MME: three),
    which would otherwise decode the whole file again each time.  ``read_ahead`` starts decoding upcoming videos on a
    background thread (PyAV decodes outside the GIL), so the next request's decoding overlaps this one's GPU work.
    """

    def __init__(self, budget: VideoBudget, fps: float = FPS, frames: Optional[int] = None,
                 geometry: VideoGeometry = QWEN2_VL):
        self.budget, self.fps, self.frames, self.geometry = budget, float(fps), frames, geometry
        self.last: Optional[tuple] = None  # (key, video) of the last video read
        self.pending: Dict[tuple, Future] = {}  # key -> Future of a video being read ahead
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="videorope-video")

    def key(self, path: str) -> tuple:
        stat = os.stat(path)  # a file rewritten in place is read anew
        return os.path.realpath(path), stat.st_size, stat.st_mtime_ns

    def _read(self, path: str) -> SampledVideo:
        return read_video(path, self.budget, self.fps, self.frames, self.geometry)

    def __call__(self, path: str) -> SampledVideo:
        """``path``'s frames (uint8 [T, 3, H, W]) and their times."""
        key = self.key(path)
        if self.last is None or self.last[0] != key:
            self.last = None  # the old frames go before the new ones are read
            ahead = self.pending.pop(key, None)
            self.last = (key, ahead.result() if ahead else self._read(path))
        return self.last[1]

    def read_ahead(self, paths: Sequence) -> None:
        """Start decoding these videos (non-paths are skipped).  A file that cannot be read is left to the request
        itself, which then fails with the error it would have without reading ahead."""
        for path in paths:
            if not isinstance(path, str):
                continue
            try:
                key = self.key(path)
            except OSError:
                continue
            if key not in self.pending and (self.last is None or self.last[0] != key):
                self.pending[key] = self.pool.submit(self._read, path)

    def drop_pending(self) -> None:
        """Forget videos read ahead for requests that never came."""
        self.pending.clear()


def sample_times(info: VideoInfo, count: int, fps: Optional[float] = None) -> Tuple[List[float], bool]:
    """Timestamps (s) of ``count`` haystack frames, and whether the video had to be looped.

    ``fps=None``: spread evenly over the whole video (frame k at (k + ½)·D/count); when the video has fewer
    frames than ``count``, every frame is used in turn and the video loops.  ``fps=f``: frame k at k/f from
    the start (LongVA / VideoRoPE sample 1 fps), looping past the end.
    """
    if count < 1:
        raise ValueError(f"need at least one haystack frame, got {count}")
    duration = info.duration
    if fps is not None:
        if fps <= 0:
            raise ValueError(f"--haystack-fps must be > 0, got {fps}")
        times = [k / fps for k in range(count)]
        looped = times[-1] >= duration
        return [t % duration for t in times], looped
    if count <= info.frames:
        return [(k + 0.5) * duration / count for k in range(count)], False
    return [((k % info.frames) + 0.5) * duration / info.frames for k in range(count)], True


def read_frames(path: Union[str, Path], times: Sequence[float], size: Tuple[int, int]) -> np.ndarray:
    """uint8 [len(times), H, W, 3]: the frame on screen at each time, resized to ``size`` = (H, W)."""
    import av

    with av.open(str(path)) as container:
        return decode_frames(container, times, size, path)


def decode_frames(container, times: Sequence[float], size: Tuple[int, int], path: Union[str, Path] = "the video"
                  ) -> np.ndarray:
    """``read_frames`` on an open PyAV container: one decoding pass; each decoded frame that is used is resized
    once."""
    class _Lazy:  # a decoded frame, resized on first use only (most frames of a long video are skipped)
        def __init__(self, frame):
            self.frame, self.array = frame, None

        def get(self):
            if self.array is None:
                self.array = resize_rgb(self.frame.to_image(), size)
                self.frame = None
            return self.array

    order = sorted(range(len(times)), key=lambda k: times[k])
    out = np.empty((len(times), size[0], size[1], 3), dtype=np.uint8)
    pointer, previous = 0, None
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    rate = float(stream.average_rate or 25)
    for index, frame in enumerate(container.decode(stream)):
        time = frame.time if frame.time is not None else index / rate
        current = _Lazy(frame)
        while pointer < len(order) and times[order[pointer]] < time:
            # the frame on screen at that time is the previous one (the first frame for times before it)
            out[order[pointer]] = (previous or current).get()
            pointer += 1
        if pointer >= len(order):
            break
        previous = current
    if previous is None and pointer < len(order):
        raise ValueError(f"{path}: no frame could be decoded")
    while pointer < len(order):
        out[order[pointer]] = previous.get()
        pointer += 1
    return out


def haystack_frames(
    path: Union[str, Path], count: int, size: Tuple[int, int], fps: Optional[float] = None
) -> np.ndarray:
    """``count`` frames of the haystack video, resized to ``size``; warns when the video loops (the file opened
    once)."""
    import av

    with av.open(str(path)) as container:
        info = video_info(container, path)
        times, looped = sample_times(info, count, fps)
        if looped:
            have = info.frames if fps is None else max(1, math.floor(info.duration * fps))
            warnings.warn(
                f"haystack {path} yields {have} distinct frames ({info.duration:.1f} s at "
                f"{'its own rate' if fps is None else f'{fps} fps'}) but {count} are needed: the video is looped",
                stacklevel=2,
            )
        return decode_frames(container, times, size, path)
