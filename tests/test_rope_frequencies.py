"""Frequency allocation, extrapolation formulas and the cos/sin gather, against independent computations."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from videorope_train.rope import (
    RopeConfig,
    apply_rotary_eager,
    frequency_axes,
    rotary_cos_sin,
    scaled_inv_freq,
    yarn_ramp_bounds,
)

D, BETA, L, S = 128, 1e6, 32768, 4.0


def theta(n, base=BETA, d=D):
    return base ** (-2 * n / d)


def close(actual, expected):
    assert actual.dtype == torch.float32 and actual.shape == (len(expected),)
    torch.testing.assert_close(actual.double(), torch.tensor(expected, dtype=torch.float64), rtol=2e-6, atol=0)


# ----------------------------------------------------------------------------------------------------------
# Allocation.

def test_axes_videorope_qwen2vl():
    axes = frequency_axes(RopeConfig("videorope"), (16, 24, 24)).tolist()
    assert axes[0:48:2] == [1] * 24  # n even in 0..46 -> h
    assert axes[1:48:2] == [2] * 24  # n odd in 1..47 -> w
    assert axes[48:] == [0] * 16  # the 16 lowest frequencies -> t


def test_axes_mrope_qwen2vl():
    assert frequency_axes(RopeConfig("mrope"), (16, 24, 24)).tolist() == [0] * 16 + [1] * 24 + [2] * 24


def test_axes_mrope_interleaved():
    """MRoPE-I, worked by hand from Qwen3-VL's rule: on its section (24, 20, 20) frequencies cycle t, h, w from n = 0
    until the h and w budgets (20 each, n < 60) run out; n = 60..63 are t. On Qwen2-VL's (16, 24, 24) the same rule
    stops at the 64th frequency: h at n = 1, 4, ..., 61 (21), w at 2, 5, ..., 62 (21), t at the other 22."""
    axes = frequency_axes(RopeConfig("mrope-interleaved"), (24, 20, 20)).tolist()
    assert axes == [0, 1, 2] * 20 + [0] * 4
    axes = frequency_axes(RopeConfig("mrope-interleaved"), (16, 24, 24)).tolist()
    assert axes == [0, 1, 2] * 21 + [0]
    assert frequency_axes(RopeConfig("mrope-interleaved"), (4, 6, 6)).tolist() == [0, 1, 2] * 5 + [0]


def test_axes_other_sections():
    assert frequency_axes(RopeConfig("mrope"), (8, 12, 12)).tolist() == [0] * 8 + [1] * 12 + [2] * 12
    assert frequency_axes(RopeConfig("videorope"), (8, 12, 12)).tolist() == [1, 2] * 12 + [0] * 8
    # uneven h/w: alternate while both last, then the larger axis
    assert frequency_axes(RopeConfig("videorope"), (4, 6, 8)).tolist() == [1, 2] * 6 + [2, 2] + [0] * 4
    assert frequency_axes(RopeConfig("videorope"), (2, 3, 1)).tolist() == [1, 2, 1, 1, 0, 0]


@pytest.mark.parametrize("section, head_dim", [((16, 24, 24), 64), ((16, 24), 128), ((0, 32, 32), 128), ((16, 24, 24), 127)])
def test_bad_sections_rejected(section, head_dim):
    with pytest.raises(ValueError, match="mrope_section|head_dim"):
        scaled_inv_freq(RopeConfig("videorope"), head_dim=head_dim, mrope_section=section)


# ----------------------------------------------------------------------------------------------------------
# Extrapolation, each against the spec's formula computed in float64 here.

def test_no_scaling():
    close(scaled_inv_freq(RopeConfig()), [theta(n) for n in range(64)])


def test_ntk():
    cfg = RopeConfig(extrapolation="ntk", extrapolation_factor=S)
    base = BETA * S ** (D / (D - 2))
    close(scaled_inv_freq(cfg), [theta(n, base) for n in range(64)])


def test_yarn_bounds_from_spec():
    assert yarn_ramp_bounds(128, 1e6, 32768) == (23, 40)


def test_yarn():
    cfg = RopeConfig(extrapolation="yarn", extrapolation_factor=S, original_context=L)
    low = math.floor(D * math.log(L / (2 * math.pi * 32)) / (2 * math.log(BETA)))
    high = math.ceil(D * math.log(L / (2 * math.pi * 1)) / (2 * math.log(BETA)))
    expected = []
    for n in range(64):
        m = 1 - min(max((n - low) / (high - low), 0), 1)
        expected.append(theta(n) * m + theta(n) / S * (1 - m))
    close(scaled_inv_freq(cfg), expected)
    freqs = scaled_inv_freq(cfg)
    assert freqs[23] == pytest.approx(theta(23), rel=1e-6) and freqs[40] == pytest.approx(theta(40) / S, rel=1e-6)


@pytest.mark.parametrize("length", [100, L, L + 1, 3 * L, torch.tensor(3 * L)])
def test_dynamic(length):
    cfg = RopeConfig(extrapolation="dynamic", extrapolation_factor=S, original_context=L)
    n_tokens = int(length)
    if n_tokens <= L:
        expected = [theta(n) for n in range(64)]
    else:
        base = BETA * (S * n_tokens / L - (S - 1)) ** (D / (D - 2))
        expected = [theta(n, base) for n in range(64)]
    close(scaled_inv_freq(cfg, seq_len=length), expected)
    with pytest.raises(ValueError, match="seq_len"):
        scaled_inv_freq(cfg)


def ntk_theta(n):
    base = BETA * ((L * S - 1) / (L - 1)) ** (D / (D - 2))
    return theta(n, base)


def test_mrope_plus_plus():
    cfg = RopeConfig("mrope", extrapolation="mrope++", extrapolation_factor=S, original_context=L)
    expected = [theta(n) for n in range(16)]
    expected += [0.5 * theta(n) / S + 0.5 * ntk_theta(n) for n in range(16, 40)]
    expected += [ntk_theta(n) for n in range(40, 64)]
    close(scaled_inv_freq(cfg), expected)


def test_yarn_v():
    cfg = RopeConfig("videorope", extrapolation="yarn-v", extrapolation_factor=S, original_context=L)
    expected = [theta(n) for n in range(48)] + [ntk_theta(n) for n in range(48, 64)]
    close(scaled_inv_freq(cfg), expected)


def test_yarn_v_other_section():
    cfg = RopeConfig("videorope", extrapolation="yarn-v", extrapolation_factor=2.0, original_context=1024)
    base = 1e4 * ((1024 * 2.0 - 1) / 1023) ** (64 / 62)
    expected = [theta(n, 1e4, 64) for n in range(24)] + [theta(n, base, 64) for n in range(24, 32)]
    close(scaled_inv_freq(cfg, head_dim=64, rope_theta=1e4, mrope_section=(8, 12, 12)), expected)


@pytest.mark.parametrize("method, variant", [("ntk", "videorope"), ("yarn", "mrope"), ("dynamic", "vanilla"),
                                             ("mrope++", "mrope"), ("yarn-v", "videorope")])
def test_factor_one_is_no_scaling(method, variant):
    cfg = RopeConfig(variant, extrapolation=method, extrapolation_factor=1.0)
    unscaled = scaled_inv_freq(RopeConfig(variant))
    torch.testing.assert_close(scaled_inv_freq(cfg, seq_len=L // 2), unscaled, rtol=1e-7, atol=0)


# ----------------------------------------------------------------------------------------------------------
# The gather: equal to the slow per-frequency reference and to stock M-RoPE's section split.

def spec_axis(variant, n, section):
    """The axis (0 t, 1 h, 2 w) carrying frequency n, as docs/method.md states it (not frequency_axes)."""
    n_t, n_h, n_w = section
    if variant == "mrope":
        return 0 if n < n_t else 1 if n < n_t + n_h else 2
    if variant == "mrope-interleaved":  # Qwen3-VL: h on n = 1, 4, 7, ... below 3·n_h, w on 2, 5, ... below 3·n_w
        return 1 if n % 3 == 1 and n < 3 * n_h else 2 if n % 3 == 2 and n < 3 * n_w else 0
    if n >= n_h + n_w:  # LTA: the last n_t (lowest) frequencies carry time
        return 0
    pairs = min(n_h, n_w)  # the rest alternate h, w from the start; a longer axis keeps the remainder
    if n < 2 * pairs:
        return 1 if n % 2 == 0 else 2
    return 1 if n_h > n_w else 2


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 3),
    st.integers(1, 40),
    st.sampled_from([(16, 24, 24), (24, 20, 20), (8, 12, 12), (4, 6, 6), (2, 3, 5)]),
    st.sampled_from(["videorope", "mrope", "mrope-interleaved"]),
    st.sampled_from([torch.long, torch.float32]),
)
def test_gather_matches_a_per_channel_float64_reference(batch, length, section, variant, pos_dtype):
    """Channel c of cos/sin = cos/sin(position on the axis of frequency c mod F × inv_freq), computed per channel in
    float64.  Tolerance from the arithmetic: the gather forms each angle as one float32 product (0.5 ulp of the angle)
    and float32 cos/sin add a few ulps of their argument reduction, so |error| <= 4·eps32·angle + 4·eps32; a channel
    that read the wrong axis or frequency is off by O(1) for positions up to 5000."""
    cfg = RopeConfig(variant)
    head_dim = 2 * sum(section)
    inv_freq = scaled_inv_freq(cfg, head_dim=head_dim, rope_theta=1e4, mrope_section=section)
    positions = (torch.rand(3, batch, length) * 5000).to(pos_dtype)
    cos, sin = rotary_cos_sin(positions, inv_freq, frequency_axes(cfg, section))
    frequencies = inv_freq.numel()
    angles = torch.stack([positions[spec_axis(variant, c % frequencies, section)].double()
                          * float(inv_freq[c % frequencies]) for c in range(head_dim)], dim=-1)
    eps = torch.finfo(torch.float32).eps
    atol = 4 * eps * float(angles.abs().max()) + 4 * eps
    assert cos.shape == sin.shape == (batch, length, head_dim)
    torch.testing.assert_close(cos.double(), angles.cos(), rtol=0, atol=atol)
    torch.testing.assert_close(sin.double(), angles.sin(), rtol=0, atol=atol)


def test_mrope_gather_equals_section_split():
    # transformers' M-RoPE: cos per row [3, B, L, D], split into mrope_section*2 chunks, chunk i from row i % 3
    section = (16, 24, 24)
    inv_freq = scaled_inv_freq(RopeConfig("mrope"))
    positions = torch.randint(0, 9000, (3, 2, 17))
    freqs = positions[..., None].float() * inv_freq  # [3, B, L, 64]
    emb = torch.cat((freqs, freqs), dim=-1)
    chunks = emb.cos().split([*section, *section], dim=-1)
    stock_cos = torch.cat([chunk[i % 3] for i, chunk in enumerate(chunks)], dim=-1)
    cos, _ = rotary_cos_sin(positions, inv_freq, frequency_axes(RopeConfig("mrope"), section))
    torch.testing.assert_close(cos, stock_cos, rtol=0, atol=0)


@pytest.mark.parametrize("section", [(24, 20, 20), (16, 24, 24)])
def test_mrope_interleaved_gather_equals_qwen3_vl(section):
    """MRoPE-I's cos/sin equal transformers' own Qwen3-VL text rotary module (its apply_interleaved_mrope) for the
    same 3-row positions, bit for bit: the same float32 inverse frequencies and products."""
    from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLTextConfig
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextRotaryEmbedding

    head_dim = 2 * sum(section)
    config = Qwen3VLTextConfig(hidden_size=head_dim * 2, num_attention_heads=2, head_dim=head_dim,
                               rope_parameters={"rope_type": "default", "rope_theta": 5e6,
                                                "mrope_section": list(section), "mrope_interleaved": True})
    stock = Qwen3VLTextRotaryEmbedding(config)
    positions = torch.randint(0, 9000, (3, 2, 17))
    stock_cos, stock_sin = stock(torch.zeros(1, dtype=torch.float32), positions)
    cfg = RopeConfig("mrope-interleaved")
    inv_freq = scaled_inv_freq(cfg, head_dim=head_dim, rope_theta=5e6, mrope_section=section)
    cos, sin = rotary_cos_sin(positions, inv_freq, frequency_axes(cfg, section))
    torch.testing.assert_close(cos, stock_cos, rtol=0, atol=0)
    torch.testing.assert_close(sin, stock_sin, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_apply_rotary_relative_and_dtype(dtype):
    # 1-D positions: q·k after rotation depends only on the position difference
    inv_freq = scaled_inv_freq(RopeConfig("vanilla"), head_dim=64, mrope_section=(8, 12, 12))
    axes = frequency_axes(RopeConfig("vanilla"), (8, 12, 12))
    q, k = torch.randn(1, 1, 1, 64), torch.randn(1, 1, 1, 64)
    scores = []
    for offset in (0, 37, 1000):
        pos = torch.tensor([[[offset + 5, offset]]]).expand(3, 1, 2)
        cos, sin = rotary_cos_sin(pos, inv_freq, axes, dtype=dtype)
        assert cos.dtype == dtype
        qr, kr = apply_rotary_eager(q.expand(1, 1, 2, 64).to(dtype), k.expand(1, 1, 2, 64).to(dtype), cos, sin)
        scores.append((qr[0, 0, 0].float() @ kr[0, 0, 1].float()).item())
    tol = 1e-3 if dtype == torch.float32 else 0.3
    assert scores[1] == pytest.approx(scores[0], abs=tol) and scores[2] == pytest.approx(scores[0], abs=tol)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2), (torch.float16, 1e-3)])
@pytest.mark.parametrize("shape", [(1, 4, 7, 16), (2, 28, 33, 128), (3, 1, 1, 8)])
def test_apply_rotary_matches_reference_formula(dtype, tol, shape):
    """apply_rotary == the textbook q·cos + rotate_half(q)·sin, computed in float64, on random inputs."""
    torch.manual_seed(0)
    b, h, length, d = shape
    q, k = torch.randn(*shape), torch.randn(b, max(1, h // 2), length, d)
    angles = torch.rand(b, length, d // 2) * 100
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    got_q, got_k = apply_rotary_eager(q.to(dtype), k.to(dtype), cos.to(dtype), sin.to(dtype))

    def reference(x):
        x, c, s = x.double(), cos.double().unsqueeze(1), sin.double().unsqueeze(1)
        x1, x2 = x[..., : d // 2], x[..., d // 2 :]
        return x * c + torch.cat((-x2, x1), -1) * s

    assert got_q.dtype == dtype
    torch.testing.assert_close(got_q.double(), reference(q), rtol=tol, atol=tol * 10)
    torch.testing.assert_close(got_k.double(), reference(k), rtol=tol, atol=tol * 10)
