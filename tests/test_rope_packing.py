"""The sequence-local text row for packed rows, checked against transformers' own boundary finders."""

import torch
from transformers.masking_utils import find_packed_sequence_indices
from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids

from rope_reference import IMG, VE, VID, VS
from videorope_train.rope import RopeConfig, get_rope_index, sequence_local_positions

A = 10


def packed_t_row(variant):
    """Three samples packed in one row the way LLaMA-Factory does it: per-sample positions, concatenated."""
    samples = [
        ([A, VS] + [VID] * 12 + [VE, A], None, torch.tensor([[3, 4, 4]])),  # video, T=3 -> t jumps by δ
        ([A, A, A], None, None),  # text only
        ([VS] + [IMG] * 6 + [VE, A, A], torch.tensor([[1, 4, 6]]), None),  # image first
    ]
    rows = []
    for tokens, image_grid, video_grid in samples:
        pos, _ = get_rope_index(RopeConfig(variant, temporal_stride=2.5), torch.tensor([tokens]), image_grid, video_grid)
        rows.append(pos[0])
    return torch.cat(rows, dim=-1), [16, 3, 10]


def test_flash_attention_boundaries_from_text_row():
    for variant in ("videorope", "mrope", "tad", "vanilla"):
        t_row, lengths = packed_t_row(variant)
        text_row = sequence_local_positions(t_row)
        (cu_q, _), (max_q, _) = prepare_fa_kwargs_from_position_ids(text_row)
        assert cu_q.tolist() == [0, 16, 19, 29] and max_q == 16
        # the raw t row (what LLaMA-Factory prepends) has zeros only at sample starts as well
        (cu_raw, _), _ = prepare_fa_kwargs_from_position_ids(t_row)
        assert cu_raw.tolist() == [0, 16, 19, 29]


def test_sdpa_packed_mask_from_text_row():
    t_row, lengths = packed_t_row("videorope")
    expected = torch.repeat_interleave(torch.arange(3), torch.tensor(lengths)).unsqueeze(0)
    assert torch.equal(find_packed_sequence_indices(sequence_local_positions(t_row)), expected)
    # VideoRoPE's own t row would be cut at every frame and at every block: why the hook rewrites it
    assert find_packed_sequence_indices(t_row)[0, -1] > 2


def test_sequence_local_positions_batch():
    rows = torch.tensor([[0, 1, 2, 0, 5, 5, 0], [0, 2, 4, 6, 8, 10, 12]])
    assert sequence_local_positions(rows).tolist() == [[0, 1, 2, 0, 1, 2, 0], [0, 1, 2, 3, 4, 5, 6]]
