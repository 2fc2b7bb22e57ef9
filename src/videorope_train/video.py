"""What the package knows about a video file and its visual-token budget, for the model's processor, the data
tools and evaluation alike (a leaf module: nothing of the package, PyAV only when a file is opened).

``VideoBudget`` is the authors' per-video visual budget: each frame's pixel limit from the number of frames of its
video, per-frame max_pixels = min(max_frame_pixels, 2 · total_pixels / frames), and at least ``min_frame_pixels``
(the authors passed the frame count as min_pixels; this is the sane floor instead).  Two frames share one
temporal patch, hence the 2: a video then holds at most total_pixels / (28·28) visual tokens — 8000 with the
authors' total_pixels = 6,272,000.  The frame count itself comes from LLaMA-Factory's sampling (``video_fps``,
``video_maxlen``: min(128, 2 fps · duration), rounded up to even).

``probe_video`` reads a file's frame count, duration, rate and frame size with PyAV.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Union

TOKEN_PIXELS = 28 * 28  # one visual token per 28×28 pixels of a temporal patch (14-pixel patches, 2×2 merge)


@dataclass(frozen=True)
class VideoBudget:
    total_pixels: int = 8000 * TOKEN_PIXELS
    max_frame_pixels: int = 768 * TOKEN_PIXELS
    min_frame_pixels: int = 4 * TOKEN_PIXELS

    def __post_init__(self):
        if self.total_pixels < TOKEN_PIXELS or not 0 < self.min_frame_pixels <= self.max_frame_pixels:
            raise ValueError(
                f"invalid video budget {self}: need total_pixels >= {TOKEN_PIXELS} and "
                f"0 < min_frame_pixels <= max_frame_pixels"
            )

    @classmethod
    def of_tokens(cls, token_pixels: int, total: int = 8000, max_frame: int = 768, min_frame: int = 4) -> "VideoBudget":
        """The authors' budget in visual tokens (8000 per video, 768 per frame, at least 4) for a model whose token
        covers ``token_pixels`` pixels of a temporal patch: 28·28 for Qwen2-VL, 32·32 for Qwen3-VL (16-pixel
        patches, 2×2 merge) — the same token counts, so a Qwen3-VL twin sees as many visual tokens per video."""
        return cls(total * token_pixels, max_frame * token_pixels, min_frame * token_pixels)

    def frame_max_pixels(self, frames: int) -> int:
        """Pixel limit of each frame of a video with ``frames`` frames."""
        share = 2 * self.total_pixels // max(frames, 1)
        return max(self.min_frame_pixels, min(self.max_frame_pixels, share))

    @property
    def max_tokens(self) -> int:
        return self.total_pixels // TOKEN_PIXELS

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class VideoInfo:
    frames: int  # frame count (exact when the container says so, else duration × rate)
    duration: float  # seconds
    fps: float
    height: int = 0  # pixels of a decoded frame (0: not recorded)
    width: int = 0


def probe_video(path: Union[str, Path]) -> VideoInfo:
    """Frame count, duration, rate and frame size of the first video stream of ``path`` (see ``video_info``)."""
    import av

    with av.open(str(path)) as container:
        return video_info(container, path)


def video_info(container, path: Union[str, Path] = "the video") -> VideoInfo:
    """``VideoInfo`` of an open PyAV container (a caller that decodes next keeps it open: one open per video).

    The duration is the video stream's own (what frames are sampled from); the container's, which an audio track
    may lengthen, only when the stream has none; frames / rate when neither is recorded.  ValueError when there is
    no video stream.
    """
    if not container.streams.video:
        raise ValueError(f"{path} has no video stream")
    stream = container.streams.video[0]
    fps = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
    duration = None
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / 1_000_000  # av.time_base: microseconds
    frames = int(stream.frames or 0)
    if frames <= 0:
        if duration is None:
            frames = sum(1 for _ in container.decode(stream))
            container.seek(0)
        else:
            frames = max(1, round(duration * fps))
    if duration is None or duration <= 0:
        duration = frames / fps
    return VideoInfo(frames, duration, fps, int(stream.codec_context.height or 0), int(stream.codec_context.width or 0))
