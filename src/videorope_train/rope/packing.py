"""Packed (varlen) sequences: the 1-D text row transformers uses to find sequence boundaries.

LLaMA-Factory prepends the t row of the 3-D positions as the "text" row ([text; t; h; w]).  transformers finds
packed-sequence boundaries from that row in two ways: flash-attention 2 starts a sequence wherever it is 0,
and the sdpa/eager mask builder wherever consecutive values differ by anything but 1.  VideoRoPE's t row stays
put inside a frame and jumps by δ between frames, so it must not reach the second rule: this module turns it
into sequence-local 0, 1, 2, … numbering (a sequence starts at each 0), which satisfies both.
"""

import torch


def sequence_local_positions(first_row: torch.Tensor) -> torch.Tensor:
    """[B, L] positions whose zeros mark sequence starts → [B, L] long index of each token within its sequence."""
    batch, length = first_row.shape
    index = torch.arange(length, device=first_row.device).expand(batch, length)
    starts = torch.where(first_row == 0, index, torch.zeros_like(index)).cummax(dim=-1).values
    return index - starts


def varlen_boundaries(local_positions: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Sequence-local positions [B, L] → (cu_seqlens [n + 1] int32, longest sequence) of the flattened rows.

    What flash-attention's varlen kernel needs, computed once per forward (one host read for the maximum, which the
    kernel takes as an int) instead of in every layer.  Each row starts a sequence (its first position is 0).
    """
    flat = local_positions.reshape(-1)
    starts = torch.nonzero(flat == 0).flatten()
    cu_seqlens = torch.nn.functional.pad(starts, (0, 1), value=flat.numel()).to(torch.int32)
    return cu_seqlens, int(cu_seqlens.diff().max())
