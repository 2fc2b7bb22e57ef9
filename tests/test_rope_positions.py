"""Position ids of every variant: the spec's worked example, hand-derived cases, properties, errors."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rope_reference import IMG, VE, VID, VS, reference_positions
from videorope_train.rope import RopeConfig, get_rope_index

A, B, C, D, X, Y = 10, 11, 12, 13, 14, 15
PAD = 0


def ids(*parts):
    out = []
    for p in parts:
        out.extend(p if isinstance(p, list) else [p])
    return torch.tensor([out])


def rows(position_ids, b=0):
    return [position_ids[r, b].tolist() for r in range(3)]


# ----------------------------------------------------------------------------------------------------------
# The spec's worked example: `a b <vs>`, video_grid_thw (2, 6, 8) -> T=2, H=3, W=4, then `<ve> c d`.
WORKED = ids(A, B, VS, [VID] * 24, VE, C, D)
WORKED_GRID = torch.tensor([[2, 6, 8]])


def test_worked_example_videorope():
    pos, deltas = get_rope_index(RopeConfig("videorope", temporal_stride=2.0), WORKED, video_grid_thw=WORKED_GRID)
    t, h, w = rows(pos)
    assert t == [0, 1, 2] + [3] * 12 + [5] * 12 + [6, 7, 8]
    assert h == [0, 1, 2] + [2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4] + [4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6] + [6, 7, 8]
    assert w == [0, 1, 2] + [2, 3, 4, 5] * 3 + [4, 5, 6, 7] * 3 + [6, 7, 8]
    assert deltas.tolist() == [[-21]]
    assert pos.dtype == torch.long


def test_worked_example_mrope():
    pos, deltas = get_rope_index(RopeConfig("mrope"), WORKED, video_grid_thw=WORKED_GRID)
    t, h, w = rows(pos)
    assert t == [0, 1, 2] + [3] * 12 + [4] * 12 + [7, 8, 9]
    assert h == [0, 1, 2] + [3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5] * 2 + [7, 8, 9]
    assert w == [0, 1, 2] + [3, 4, 5, 6] * 6 + [7, 8, 9]
    assert deltas.tolist() == [[-20]]


def test_worked_example_vanilla():
    pos, deltas = get_rope_index(RopeConfig("vanilla"), WORKED, video_grid_thw=WORKED_GRID)
    assert rows(pos) == [list(range(30))] * 3
    assert deltas.tolist() == [[0]]


def test_worked_example_tad():
    pos, deltas = get_rope_index(RopeConfig("tad"), WORKED, video_grid_thw=WORKED_GRID)
    expected = [0, 2, 4] + list(range(6, 18)) + list(range(19, 31)) + [32, 34, 36]
    assert rows(pos) == [expected] * 3
    assert deltas.tolist() == [[-22]]


# Qwen3-VL's layout (docs/method.md, "Qwen3-VL"): `a <vs>` frame 0 `<ve> x y <vs>` frame 1 `<ve> c`, where x y stand
# for frame 1's "<t seconds>" timestamp text; video_grid_thw (2, 4, 6) -> two one-frame blocks of H=2, W=3.
WORKED3 = ids(A, VS, [VID] * 6, VE, X, Y, VS, [VID] * 6, VE, C)
WORKED3_GRID = torch.tensor([[2, 4, 6]])


def qwen3(cfg):
    return get_rope_index(cfg, WORKED3, video_grid_thw=WORKED3_GRID, frame_blocks=True)


def test_qwen3_worked_example_videorope():
    """Frame 0 at t=2 hands on δ later (4), the timestamp text counts on by 1, frame 1 (its video's last) at t=8
    hands on t+1 (code form); h/w centred on each frame's t."""
    pos, deltas = qwen3(RopeConfig("videorope", temporal_stride=2.0))
    t, h, w = rows(pos)
    assert t == [0, 1] + [2] * 6 + [4, 5, 6, 7] + [8] * 6 + [9, 10]
    assert h == [0, 1] + [2, 2, 2, 3, 3, 3] + [4, 5, 6, 7] + [8, 8, 8, 9, 9, 9] + [9, 10]
    assert w == [0, 1] + [1, 2, 3, 1, 2, 3] + [4, 5, 6, 7] + [7, 8, 9, 7, 8, 9] + [9, 10]
    assert deltas.tolist() == [[11 - 20]]


def test_qwen3_worked_example_videorope_paper_form():
    pos, deltas = qwen3(RopeConfig("videorope", temporal_stride=2.0, text_after_block="paper"))
    t, _, _ = rows(pos)
    assert t == [0, 1] + [2] * 6 + [4, 5, 6, 7] + [8] * 6 + [10, 11]
    assert deltas.tolist() == [[12 - 20]]


@pytest.mark.parametrize("variant", ["mrope", "mrope-interleaved"])
def test_qwen3_worked_example_mrope_is_stock_qwen3vl(variant):
    """Stock Qwen3-VL's get_rope_index: every frame starts at the running position, the next token at
    start + max(H, W)."""
    pos, deltas = qwen3(RopeConfig(variant))
    t, h, w = rows(pos)
    assert t == [0, 1] + [2] * 6 + [5, 6, 7, 8] + [9] * 6 + [12, 13]
    assert h == [0, 1] + [2, 2, 2, 3, 3, 3] + [5, 6, 7, 8] + [9, 9, 9, 10, 10, 10] + [12, 13]
    assert w == [0, 1] + [2, 3, 4, 2, 3, 4] + [5, 6, 7, 8] + [9, 10, 11, 9, 10, 11] + [12, 13]
    assert deltas.tolist() == [[14 - 20]]


def test_qwen3_worked_example_tad_and_vanilla():
    """TAD: each frame is one time step (2 and 7 here), plus the 1-D index; vanilla: 0..19."""
    pos, deltas = qwen3(RopeConfig("tad"))
    time = [0, 1] + [2] * 6 + [3, 4, 5, 6] + [7] * 6 + [8, 9]
    assert rows(pos) == [[p + i for i, p in enumerate(time)]] * 3
    assert deltas.tolist() == [[(10 + 20) - 2 * 20]]
    pos, deltas = qwen3(RopeConfig("vanilla"))
    assert rows(pos) == [list(range(20))] * 3 and deltas.tolist() == [[0]]


@pytest.mark.parametrize("variant", ["vanilla", "tad", "mrope", "videorope"])
def test_qwen3_layout_equals_the_per_token_reference(variant):
    grids = [(1, 4, 6), (1, 4, 6)]
    expected, following = reference_positions(variant, WORKED3[0].tolist(), grids, ends=[False, True])
    pos, deltas = qwen3(RopeConfig(variant))
    assert rows(pos) == expected
    assert float(deltas[0, 0]) == following - (2 if variant == "tad" else 1) * WORKED3.shape[1]


def test_qwen3_frames_must_each_have_their_block():
    """A frame's tokens counted against one frame's grid, and a missing frame named."""
    with pytest.raises(ValueError, match=r"row 0 = \(2, 4, 6\).*needs \(H/2\)\*\(W/2\) = 6 per frame"):
        get_rope_index(RopeConfig(), ids(A, VS, [VID] * 12, VE), video_grid_thw=WORKED3_GRID, frame_blocks=True)
    with pytest.raises(ValueError, match=r"2 one-frame block\(s\).*only 1"):
        get_rope_index(RopeConfig(), ids(A, VS, [VID] * 6, VE), video_grid_thw=WORKED3_GRID, frame_blocks=True)


def test_worked_example_paper_forms():
    cfg = RopeConfig("videorope", temporal_stride=2.0, text_after_block="paper", centering="paper")
    pos, deltas = get_rope_index(cfg, WORKED, video_grid_thw=WORKED_GRID)
    t, h, w = rows(pos)
    assert pos.dtype == torch.float32
    # text after the video: s + δ·T = 3 + 4 = 7 (code: 6)
    assert t == [0, 1, 2] + [3] * 12 + [5] * 12 + [7, 8, 9]
    # centering −H/2 = −1.5, −W/2 = −2
    assert h[3:15] == [1.5] * 4 + [2.5] * 4 + [3.5] * 4
    assert w[3:7] == [1, 2, 3, 4] and w[15:19] == [3, 4, 5, 6]
    assert deltas.tolist() == [[10 - 30]]


# ----------------------------------------------------------------------------------------------------------
# Hand-derived cases.

def test_image_only_odd_grid_all_variants():
    # x <vs> [image 1x6x10 -> LLM grid 1x3x5] <ve> y ; L = 19
    seq = ids(X, VS, [IMG] * 15, VE, Y)
    grid = torch.tensor([[1, 6, 10]])
    pos, d = get_rope_index(RopeConfig("videorope"), seq, image_grid_thw=grid)
    t, h, w = rows(pos)
    assert t == [0, 1] + [2] * 15 + [3, 4]
    assert h == [0, 1] + [1] * 5 + [2] * 5 + [3] * 5 + [3, 4]  # 2 + i − ⌊(3−1)/2⌋
    assert w == [0, 1] + [0, 1, 2, 3, 4] * 3 + [3, 4]  # 2 + j − ⌊(5−1)/2⌋
    assert d.tolist() == [[5 - 19]]

    pos, d = get_rope_index(RopeConfig("mrope"), seq, image_grid_thw=grid)
    t, h, w = rows(pos)
    assert t == [0, 1] + [2] * 15 + [7, 8]
    assert h == [0, 1] + [2] * 5 + [3] * 5 + [4] * 5 + [7, 8]
    assert w == [0, 1] + [2, 3, 4, 5, 6] * 3 + [7, 8]
    assert d.tolist() == [[9 - 19]]

    pos, d = get_rope_index(RopeConfig("tad"), seq, image_grid_thw=grid)
    # time index 0 1 | 2×15 | 3 4 ; plus vanilla 0..18
    assert rows(pos)[0] == [0, 2] + list(range(4, 19)) + [20, 22]
    assert d.tolist() == [[(5 + 19) - 2 * 19]]


def test_even_grid_centering():
    # one frame of 2x4 after `<vs>`: centre offsets ⌊(2−1)/2⌋ = 0 and ⌊(4−1)/2⌋ = 1
    seq = ids(VS, [VID] * 8, VE)
    pos, d = get_rope_index(RopeConfig("videorope"), seq, video_grid_thw=torch.tensor([[1, 4, 8]]))
    t, h, w = rows(pos)
    assert t == [0] + [1] * 8 + [2]
    assert h == [0] + [1] * 4 + [2] * 4 + [2]
    assert w == [0] + [0, 1, 2, 3] * 2 + [2]
    assert d.tolist() == [[3 - 10]]


def test_video_first_then_image_then_text_non_integer_stride():
    # <vs> [video T=3, 2x2] <ve> <vs> [image 1x2x2] <ve> a ; δ = 1.5
    seq = ids(VS, [VID] * 12, VE, VS, [IMG] * 4, VE, A)
    cfg = RopeConfig("videorope", temporal_stride=1.5)
    pos, d = get_rope_index(cfg, seq, image_grid_thw=torch.tensor([[1, 4, 4]]), video_grid_thw=torch.tensor([[3, 4, 4]]))
    t, h, w = rows(pos)
    assert pos.dtype == torch.float32
    # video s=1: t = 1, 2.5, 4 ; text after = 4 + 1 = 5 (<ve>), 6 (<vs>) ; image s=7 ; then 8, 9
    assert t == [0] + [1] * 4 + [2.5] * 4 + [4] * 4 + [5, 6] + [7] * 4 + [8, 9]
    assert h == [0] + [1, 1, 2, 2] + [2.5, 2.5, 3.5, 3.5] + [4, 4, 5, 5] + [5, 6] + [7, 7, 8, 8] + [8, 9]
    assert w == [0] + [1, 2, 1, 2] + [2.5, 3.5, 2.5, 3.5] + [4, 5, 4, 5] + [5, 6] + [7, 8, 7, 8] + [8, 9]
    assert d.tolist() == [[10 - 21]]


def test_two_videos_mrope_text_between_uses_all_rows():
    # <vs>[T=1, 2x3]<ve> a <vs>[T=2, 2x2]<ve>  (mrope: after a block, max over all rows + 1)
    seq = ids(VS, [VID] * 6, VE, A, VS, [VID] * 8, VE)
    pos, d = get_rope_index(RopeConfig("mrope"), seq, video_grid_thw=torch.tensor([[1, 4, 6], [2, 4, 4]]))
    t, h, w = rows(pos)
    # first block s=1: w reaches 3 -> <ve>=4, a=5, <vs>=6 ; second block s=7: t 7,8  h 7,8  w 7,8 -> <ve>=9
    assert t == [0] + [1] * 6 + [4, 5, 6] + [7] * 4 + [8] * 4 + [9]
    assert w == [0] + [1, 2, 3] * 2 + [4, 5, 6] + [7, 8] * 4 + [9]
    assert d.tolist() == [[10 - 19]]


def test_left_and_right_padding_and_text_only_row():
    # row 0: left padded video sample, row 1: right padded text-only sample, row 2: full text
    video = [A, VS] + [VID] * 4 + [VE, B]  # T=1, 2x2
    seq = torch.tensor([[PAD, PAD] + video, [C, D, X, PAD, PAD, PAD, PAD, PAD, PAD, PAD], [A] * 10])
    mask = (torch.arange(10) >= 2).long().unsqueeze(0).repeat(3, 1)
    mask[1] = torch.tensor([1, 1, 1, 0, 0, 0, 0, 0, 0, 0])
    mask[2] = 1
    for variant in ("videorope", "mrope", "vanilla", "tad"):
        cfg = RopeConfig(variant, temporal_stride=2.5)  # non-integer δ: float positions, no dtype clash
        pos, d = get_rope_index(cfg, seq, video_grid_thw=torch.tensor([[1, 4, 4]]), attention_mask=mask)
        for r in range(3):
            assert pos[r, 0, :2].tolist() == [1, 1] and pos[r, 1, 3:].tolist() == [1] * 7
        text_rows = rows(pos, 1)
        step = 2 if variant == "tad" else 1
        assert text_rows[0][:3] == [0, step, 2 * step] and text_rows[0] == text_rows[1] == text_rows[2]
        assert rows(pos, 2)[0] == [step * i for i in range(10)]
        assert d[1].item() == 3 * step - step * 10 and d[2].item() == 0
    cfg = RopeConfig("videorope", temporal_stride=2.5)
    pos, d = get_rope_index(cfg, seq, video_grid_thw=torch.tensor([[1, 4, 4]]), attention_mask=mask)
    assert rows(pos, 0)[0][2:] == [0, 1, 2, 2, 2, 2, 3, 4]
    assert d[0].item() == 5 - 10


def test_tad_decode_rule_with_left_padding():
    # next position = time index + vanilla index of the next token; 2·p + delta must hit it at p = L
    seq = torch.tensor([[PAD, PAD, PAD, A, B]])
    mask = torch.tensor([[0, 0, 0, 1, 1]])
    pos, d = get_rope_index(RopeConfig("tad"), seq, attention_mask=mask)
    assert pos[0, 0].tolist() == [1, 1, 1, 0, 2]
    assert 2 * 5 + d.item() == 4  # next token: time 2 + vanilla 2


# ----------------------------------------------------------------------------------------------------------
# Errors.

def test_mismatched_token_count_names_sample_and_block():
    seq = torch.cat([ids(A, A, A, A, A, A, A, A), ids(VS, [VID] * 5, VE, A)])
    with pytest.raises(ValueError, match=r"sample 1: video block 0 .* has 5 video tokens.*needs .* = 6"):
        get_rope_index(RopeConfig("videorope"), seq, video_grid_thw=torch.tensor([[1, 4, 6]]))
    with pytest.raises(ValueError, match="more than 4"):
        get_rope_index(RopeConfig("mrope"), ids(VS, [VID] * 5, VE), video_grid_thw=torch.tensor([[1, 4, 4]]))


def test_missing_and_extra_grid_rows():
    two_blocks = ids(VS, [IMG] * 4, VE, VS, [IMG] * 4, VE)
    with pytest.raises(ValueError, match="image block 1 has no image_grid_thw row"):
        get_rope_index(RopeConfig("videorope"), two_blocks, image_grid_thw=torch.tensor([[1, 4, 4]]))
    with pytest.raises(ValueError, match="video_grid_thw has 1 row"):
        get_rope_index(RopeConfig("videorope"), ids(A, B), video_grid_thw=torch.tensor([[1, 4, 4]]))
    # a grid row whose block lies entirely under attention_mask 0 (LLaMA-Factory's placeholder image) is fine
    padded = ids(A, B, VS, [IMG] * 4, VE)
    mask = torch.tensor([[1, 1, 0, 0, 0, 0, 0, 0]])
    pos, _ = get_rope_index(RopeConfig("videorope"), padded, image_grid_thw=torch.tensor([[1, 4, 4]]), attention_mask=mask)
    assert pos[0, 0].tolist() == [0, 1] + [1] * 6
    with pytest.raises(ValueError, match="divisible by spatial_merge_size"):
        get_rope_index(RopeConfig("videorope"), ids(VS, [IMG] * 4, VE), image_grid_thw=torch.tensor([[1, 3, 4]]))
    with pytest.raises(ValueError, match="must belong to a block"):
        get_rope_index(RopeConfig("videorope"), ids(A, IMG, B))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(variant="rope3d"), "variant"),
        (dict(temporal_stride=0), "temporal_stride"),
        (dict(temporal_stride=-1.5), "temporal_stride"),
        (dict(temporal_stride=float("nan")), "temporal_stride"),
        (dict(extrapolation="linear"), "extrapolation"),
        (dict(extrapolation_factor=0.5), "extrapolation_factor"),
        (dict(variant="vanilla", extrapolation="yarn-v"), "needs variant"),
        (dict(centering="middle"), "centering"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RopeConfig(**kwargs)


def test_config_round_trip_and_unknown_key():
    cfg = RopeConfig("videorope", temporal_stride=3.0, extrapolation="yarn-v", extrapolation_factor=4.0)
    assert RopeConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="delta"):
        RopeConfig.from_dict({"variant": "videorope", "delta": 2})


# ----------------------------------------------------------------------------------------------------------
# Properties over random layouts.

@st.composite
def layouts(draw):
    """A batch of samples: random text runs, images and videos (odd and even grids), random padding."""
    batch = draw(st.integers(1, 3))
    samples, image_rows, video_rows = [], [], []
    for _ in range(batch):
        tokens, grids = [], []
        for _ in range(draw(st.integers(0, 3))):
            tokens += [A] * draw(st.integers(0, 3))
            kind = draw(st.sampled_from([IMG, VID]))
            T = 1 if kind == IMG else draw(st.integers(1, 4))
            H, W = draw(st.integers(1, 4)), draw(st.integers(1, 5))
            tokens += [VS] + [kind] * (T * H * W) + [VE]
            (image_rows if kind == IMG else video_rows).append((T, 2 * H, 2 * W))
            grids.append((T, 2 * H, 2 * W))
        tokens += [B] * draw(st.integers(0 if tokens else 1, 3))
        samples.append((tokens, grids))
    length = max(len(t) for t, _ in samples) + draw(st.integers(0, 2))
    left = draw(st.booleans())
    input_ids = torch.full((batch, length), PAD)
    mask = torch.zeros(batch, length, dtype=torch.long)
    for b, (tokens, _) in enumerate(samples):
        span = slice(length - len(tokens), length) if left else slice(0, len(tokens))
        input_ids[b, span] = torch.tensor(tokens)
        mask[b, span] = 1
    stride = draw(st.sampled_from([0.5, 1.0, 2.0, 2.5, 3.0]))
    return samples, input_ids, mask, image_rows, video_rows, stride


def _grid(rows_):
    return torch.tensor(rows_) if rows_ else None


@settings(max_examples=150, deadline=None)
@given(layouts(), st.sampled_from(["vanilla", "tad", "mrope", "mrope-interleaved", "videorope"]), st.booleans(),
       st.booleans())
def test_matches_per_token_reference(layout, variant, paper_after, paper_center):
    samples, input_ids, mask, image_rows, video_rows, stride = layout
    cfg = RopeConfig(
        variant,
        temporal_stride=stride,
        text_after_block="paper" if paper_after else "code",
        centering="paper" if paper_center else "code",
    )
    pos, deltas = get_rope_index(cfg, input_ids, _grid(image_rows), _grid(video_rows), attention_mask=mask)
    length = input_ids.shape[1]
    for b, (tokens, grids) in enumerate(samples):
        expected, next_pos = reference_positions(
            variant, tokens, grids, stride=stride, paper_after=paper_after, paper_center=paper_center
        )
        valid = mask[b].bool()
        for r in range(3):
            assert pos[r, b][valid].tolist() == pytest.approx(expected[r])
            assert (pos[r, b][~valid] == 1).all()
        steps = 2 if variant == "tad" else 1
        # decode rule: the first generated token sits at cache position p = L
        assert steps * length + deltas[b, 0].item() == pytest.approx(next_pos)


@settings(max_examples=100, deadline=None)
@given(layouts())
def test_videorope_invariants(layout):
    samples, input_ids, mask, image_rows, video_rows, stride = layout
    pos, deltas = get_rope_index(RopeConfig("videorope", temporal_stride=stride), input_ids, _grid(image_rows),
                                 _grid(video_rows), attention_mask=mask)
    for b, (tokens, grids) in enumerate(samples):
        valid = mask[b].bool()
        t, h, w = (pos[r, b][valid] for r in range(3))
        tok = torch.tensor(tokens)
        text = (tok != IMG) & (tok != VID)
        # the t row never decreases, and strictly increases into every text token
        assert (t[1:] >= t[:-1]).all()
        assert (t[1:][text[1:]] > t[:-1][text[1:]]).all()
        # text tokens sit on the diagonal (t = h = w)
        assert torch.equal(t[text], h[text]) and torch.equal(t[text], w[text])
        # each frame's centre patch sits at (t, t, t) under the floor convention
        offset = 0
        starts = (tok == VS).nonzero().flatten().tolist()
        for start, (T, H0, W0) in zip(starts, grids):
            H, W = H0 // 2, W0 // 2
            for k in range(T):
                centre = start + 1 + k * H * W + ((H - 1) // 2) * W + (W - 1) // 2
                assert h[centre] == t[centre] == w[centre]
                assert t[centre] == pytest.approx(t[start] + 1 + stride * k)
            # the next text token comes right after the block's last t
            after = start + 1 + T * H * W
            if after < len(tokens):
                assert t[after] == pytest.approx(t[after - 1] + 1)
            offset += 1
        # rope_deltas: decoding continues the t row by one
        assert input_ids.shape[1] + deltas[b, 0].item() == pytest.approx(t.max().item() + 1)


def test_long_sample():
    # ~82k tokens: two 128-frame (64 temporal patches) videos and text
    video = [VS] + [VID] * (64 * 18 * 32) + [VE]
    seq = torch.tensor([[A] * 1000 + video + [B] * 2000 + video + [C] * 5000])
    grid = torch.tensor([[64, 36, 64], [64, 36, 64]])
    pos, _ = get_rope_index(RopeConfig("videorope"), seq, video_grid_thw=grid)
    assert pos.shape == (3, 1, seq.shape[1])
    # A 0..999, <vs> 1000, video t 1001..1127, <ve> 1128, B ..3128, <vs> 3129, video t 3130..3256, <ve> 3257
    assert pos[0, 0, 1000 + 1 + 36864 + 1 + 2000 + 1].item() == 3130
    assert pos[0, 0, -1].item() == 3257 + 5000


def test_masked_block_before_real_blocks_keeps_row_order():
    # sample 0: a masked-out image (its grid row comes first), sample 1: a real image with a different grid
    seq = torch.tensor([[A, VS] + [IMG] * 4 + [VE], [A, VS] + [IMG] * 2 + [VE, B, B]])
    mask = torch.tensor([[1, 0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1]])
    grids = torch.tensor([[1, 4, 4], [1, 2, 4]])  # 4 tokens for the masked block, 2 for the real one
    pos, _ = get_rope_index(RopeConfig("mrope"), seq, image_grid_thw=grids, attention_mask=mask)
    assert pos[:, 1].tolist() == [[0, 1, 2, 2, 4, 5, 6], [0, 1, 2, 2, 4, 5, 6], [0, 1, 2, 3, 4, 5, 6]]
    with pytest.raises(ValueError, match="partly padding"):
        get_rope_index(RopeConfig("mrope"), seq, image_grid_thw=grids,
                       attention_mask=torch.tensor([[1, 1, 1, 1, 0, 0, 0], [1] * 7]))
