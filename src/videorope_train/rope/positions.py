"""Position ids of every RoPE variant for Qwen2-VL-style token sequences.

Pure torch.  A sequence is text interleaved with visual blocks; a block is ``<|vision_start|>`` followed by
T·H·W ``<|image_pad|>`` or ``<|video_pad|>`` tokens, where (T, H, W) is the block's ``*_grid_thw`` row
with H and W divided by ``spatial_merge_size``.  Grid rows are consumed in order of appearance across the
batch (sample 0's blocks first), as Qwen2-VL's processor emits them.

With ``frame_blocks=True`` (Qwen3-VL) a video row (T, H, W) is T blocks of one temporal patch each, every one
led by its own ``<|vision_start|>`` and separated by text (Qwen3-VL's ``<t seconds>`` timestamps).  Each frame
is placed as a one-frame block; for VideoRoPE the token after a frame that is not its video's last starts δ
after the frame's temporal index, so with no text between frames the positions are exactly those of one
T-frame block (docs/method.md, "Qwen3-VL").

Work is vectorised per visual block (no per-token Python), linear in the sequence length.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from .config import RopeConfig

POSITIONS_VERSION = 1
"""Bump whenever ``get_rope_index`` gives other positions for the same RopeConfig and tokens: checkpoints record
the version that trained them, and loading one trained under another version warns."""


class _GridRows:
    """The blocks one ``*_grid_thw`` tensor describes, handed out in order.

    A block is (row index, (T, H, W), whether it ends its row): one per row, or with ``frame_blocks`` one per
    temporal patch of each row (T = 1 each, only the last ending the row)."""

    def __init__(self, grid_thw: Optional[torch.Tensor], name: str, frame_blocks: bool = False):
        self.name = name
        self.frame_blocks = frame_blocks
        self.rows: List[Tuple[int, int, int]] = []
        self.blocks: List[Tuple[int, Tuple[int, int, int], bool]] = []
        if grid_thw is not None:
            if grid_thw.dim() != 2 or grid_thw.shape[-1] != 3:
                raise ValueError(f"{name} must have shape [num_blocks, 3], got {tuple(grid_thw.shape)}")
            self.rows = [tuple(int(v) for v in row) for row in grid_thw.tolist()]
        for index, (t, h, w) in enumerate(self.rows):
            if frame_blocks and t > 1:
                self.blocks += [(index, (1, h, w), frame == t - 1) for frame in range(t)]
            else:
                self.blocks.append((index, (t, h, w), True))
        self.used = 0

    def take(self, sample: int, block: int, kind: str) -> Tuple[int, Tuple[int, int, int], bool]:
        if self.used >= len(self.blocks):
            unit = "row or frame" if self.frame_blocks else "row"
            raise ValueError(
                f"sample {sample}: {kind} block {block} has no {self.name} {unit} "
                f"(only {len(self.rows)} row(s) given for the whole batch)"
            )
        self.used += 1
        return self.blocks[self.used - 1]

    def check_all_used(self) -> None:
        if self.used != len(self.blocks):
            what = f"{len(self.blocks)} one-frame block(s)" if self.frame_blocks else f"{len(self.rows)} row(s)"
            raise ValueError(
                f"{self.name} has {len(self.rows)} row(s) ({what}) but the batch's input_ids contain only "
                f"{self.used} such block(s): were visual tokens truncated, e.g. by cutoff_len?"
            )


def _find_blocks(
    row: torch.Tensor,
    valid: torch.Tensor,
    sample: int,
    grids: dict,
    spatial_merge_size: int,
    vision_start_token_id: int,
) -> List[Tuple[int, int, int, int, int, bool]]:
    """Visual blocks of one sample as (start among its valid tokens, length, T, H, W, whether it ends its grid
    row), H/W in LLM-grid units.

    Blocks are walked in order over the whole row, so grid rows are handed out in order of appearance; a block
    lying entirely under attention_mask 0 (padding, LLaMA-Factory's placeholder image) takes its row but no
    positions.
    """
    starts = torch.nonzero(row[:-1] == vision_start_token_id).flatten() + 1
    kinds = row[starts]
    visual = torch.zeros_like(kinds, dtype=torch.bool)
    for token_id in grids:
        visual |= kinds == token_id
    valid_before = torch.cumsum(valid, 0) - valid.long()  # valid tokens before each index
    blocks = []
    expected = {token_id: 0 for token_id in grids}
    for block, (start, token_id) in enumerate(zip(starts[visual].tolist(), kinds[visual].tolist())):
        rows, kind = grids[token_id]
        row_index, (t, h0, w0), ends_row = rows.take(sample, block, kind)
        if t < 1 or h0 < 1 or w0 < 1 or h0 % spatial_merge_size or w0 % spatial_merge_size:
            raise ValueError(
                f"{rows.name} row {row_index} = {rows.rows[row_index]} is invalid: T, H, W must be >= 1 and H, W "
                f"divisible by spatial_merge_size={spatial_merge_size}"
            )
        h, w = h0 // spatial_merge_size, w0 // spatial_merge_size
        length = t * h * w
        window = row[start : start + length + 1] == token_id
        run = window.numel() if bool(window.all()) else int(torch.argmin(window.to(torch.uint8)))
        if run != length:
            found = f"more than {length}" if run > length else str(run)
            raise ValueError(
                f"sample {sample}: {kind} block {block} (token offset {start}) has {found} {kind} tokens, but "
                f"{rows.name} row {row_index} = {rows.rows[row_index]} with spatial_merge_size={spatial_merge_size} "
                f"needs {'(H' if rows.frame_blocks else 'T*(H'}/{spatial_merge_size})*(W/{spatial_merge_size}) = "
                f"{length}{' per frame' if rows.frame_blocks else ''}"
            )
        block_valid = valid[start : start + length]
        if not bool(block_valid.any()):
            continue  # masked out: row consumed, no positions
        if not bool(block_valid.all()):
            raise ValueError(f"sample {sample}: {kind} block {block} (token offset {start}) is partly padding")
        expected[token_id] += length
        blocks.append((int(valid_before[start]), length, t, h, w, ends_row))
    for token_id, (rows, kind) in grids.items():
        count = int((row[valid] == token_id).sum())
        if count != expected[token_id]:
            raise ValueError(
                f"sample {sample}: {count} {kind} tokens in input_ids but {expected[token_id]} inside "
                f"<|vision_start|>-led blocks; every {kind} token must belong to a block"
            )
    return blocks


def _block_positions(cfg: RopeConfig, start: float, t: int, h: int, w: int, ends_row: bool = True
                     ) -> Tuple[torch.Tensor, float]:
    """Positions [3, T*H*W] (float64) of one visual block whose first token gets ``start``, and the
    position of the text token that follows it.  For ``tad`` the three rows carry its time index.
    ``ends_row=False``: a frame of a video that has more frames (``frame_blocks``); for VideoRoPE the next token
    then starts δ·T after ``start``, where the video's next frame would have been."""
    k = torch.arange(t, dtype=torch.float64).view(t, 1, 1)
    i = torch.arange(h, dtype=torch.float64).view(1, h, 1)
    j = torch.arange(w, dtype=torch.float64).view(1, 1, w)
    if cfg.variant == "videorope":
        stride = float(cfg.temporal_stride)
        t_pos = start + stride * k
        if cfg.centering == "code":
            h_pos, w_pos = t_pos + i - (h - 1) // 2, t_pos + j - (w - 1) // 2
        else:
            h_pos, w_pos = t_pos + i - h / 2, t_pos + j - w / 2
        if ends_row and cfg.text_after_block == "code":
            after = start + stride * (t - 1) + 1
        else:
            after = start + stride * t
    elif cfg.layout == "mrope":
        t_pos, h_pos, w_pos = start + k, start + i, start + j
        after = start + max(t, h, w)
    else:  # tad: the M-RoPE-style time index (the vanilla index is added by the caller)
        t_pos = h_pos = w_pos = start + k
        after = start + t
    rows = torch.stack([p.expand(t, h, w).reshape(-1) for p in (t_pos, h_pos, w_pos)])
    return rows, after


def _sample_positions(cfg: RopeConfig, length: int, blocks) -> Tuple[torch.Tensor, float]:
    """Positions [3, length] (float64) of one sample's valid tokens and the next token's position."""
    if cfg.variant == "vanilla":
        return torch.arange(length, dtype=torch.float64).expand(3, -1), float(length)
    parts, cursor, text_start = [], 0.0, 0
    for start, size, t, h, w, ends_row in blocks:
        parts.append(cursor + torch.arange(start - text_start, dtype=torch.float64).expand(3, -1))
        cursor += start - text_start
        block, cursor = _block_positions(cfg, cursor, t, h, w, ends_row)
        parts.append(block)
        text_start = start + size
    parts.append(cursor + torch.arange(length - text_start, dtype=torch.float64).expand(3, -1))
    cursor += length - text_start
    positions = torch.cat(parts, dim=1)
    if cfg.variant == "tad":  # time index + vanilla (1-D) index
        return positions + torch.arange(length, dtype=torch.float64), cursor + length
    return positions, cursor


def get_rope_index(
    cfg: RopeConfig,
    input_ids: torch.Tensor,
    image_grid_thw: Optional[torch.Tensor] = None,
    video_grid_thw: Optional[torch.Tensor] = None,
    attention_mask: Optional[torch.Tensor] = None,
    spatial_merge_size: int = 2,
    image_token_id: int = 151655,
    video_token_id: int = 151656,
    vision_start_token_id: int = 151652,
    frame_blocks: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Position ids of ``cfg.variant`` for a batch.

    Args:
        input_ids: [B, L] token ids (left or right padded).
        image_grid_thw: [num_images, 3] (T, H, W) in patches, rows in order of appearance across the batch.
        video_grid_thw: [num_videos, 3], likewise.
        attention_mask: [B, L], 1 for real tokens, 0 for padding (None = all real).
        frame_blocks: each temporal patch of a video is its own block (Qwen3-VL; see the module docstring).

    Returns:
        position_ids: [3, B, L] rows (t, h, w); padding positions hold 1.  ``torch.long`` when every
            position is an integer (see ``RopeConfig.positions_are_integer``), else ``torch.float32``.
        rope_deltas: [B, 1], same dtype.  The decode step at cache position p uses position
            p + rope_deltas on all three rows (``tad``: 2·p + rope_deltas); it equals the position the next
            token would get minus L (``tad``: minus 2·L).
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must have shape [B, L], got {tuple(input_ids.shape)}")
    batch, seq_len = input_ids.shape
    if attention_mask is None:
        valid = torch.ones(batch, seq_len, dtype=torch.bool)
    else:
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape {tuple(input_ids.shape)}"
            )
        valid = attention_mask.detach().cpu() == 1
    if spatial_merge_size < 1:
        raise ValueError(f"spatial_merge_size must be >= 1, got {spatial_merge_size}")
    grids = {
        image_token_id: (_GridRows(image_grid_thw, "image_grid_thw"), "image"),
        video_token_id: (_GridRows(video_grid_thw, "video_grid_thw", frame_blocks), "video"),
    }
    dtype = torch.long if cfg.positions_are_integer else torch.float32

    ids_cpu = input_ids.detach().cpu()
    position_ids = torch.ones(3, batch, seq_len, dtype=torch.float64)
    next_positions = torch.empty(batch, 1, dtype=torch.float64)
    for b in range(batch):
        blocks = _find_blocks(ids_cpu[b], valid[b], b, grids, spatial_merge_size, vision_start_token_id)
        positions, next_position = _sample_positions(cfg, int(valid[b].sum()), blocks)
        position_ids[:, b, valid[b]] = positions
        next_positions[b, 0] = next_position
    for rows, _ in grids.values():
        rows.check_all_used()
    rope_deltas = next_positions - cfg.text_position_step * seq_len
    return position_ids.to(dtype=dtype, device=input_ids.device), rope_deltas.to(dtype=dtype, device=input_ids.device)
