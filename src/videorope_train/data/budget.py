"""The authors' per-video visual budget: each frame's pixel limit from the number of frames of its video.

per-frame max_pixels = min(max_frame_pixels, 2 · total_pixels / frames), and at least ``min_frame_pixels``
(the authors passed the frame count as min_pixels; this is the sane floor instead).  Two frames share one
temporal patch, hence the 2: a video then holds at most total_pixels / (28·28) visual tokens — 8000 with the
authors' total_pixels = 6,272,000.  The frame count itself comes from LLaMA-Factory's sampling (``video_fps``,
``video_maxlen``: min(128, 2 fps · duration), rounded up to even).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

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

    def frame_max_pixels(self, frames: int) -> int:
        """Pixel limit of each frame of a video with ``frames`` frames."""
        share = 2 * self.total_pixels // max(frames, 1)
        return max(self.min_frame_pixels, min(self.max_frame_pixels, share))

    @property
    def max_tokens(self) -> int:
        return self.total_pixels // TOKEN_PIXELS

    def to_dict(self) -> dict:
        return asdict(self)
