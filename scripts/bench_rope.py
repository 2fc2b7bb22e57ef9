#!/usr/bin/env python
"""Speed of the rotary path: this project vs. stock M-RoPE vs. the authors' per-channel concatenation.

    python scripts/bench_rope.py [--tokens 8192 32768] [--repeats 20] [--out bench.json] [--skip-step]

(a) rotary application per layer at Qwen2-VL-7B attention shapes (head_dim 128, 28 q / 4 kv heads):
    - this project: cos/sin gathered once per forward (build timed separately), plain rotary per layer --
      eager, and on a GPU also the fused Triton kernel (what the hook picks there);
    - stock transformers M-RoPE: ``apply_multimodal_rotary_pos_emb`` (section split + cat in every layer);
    - the authors' form, re-implemented from the spec: per layer, cos/sin rebuilt by concatenating one-column
      slices (one per channel, each from its axis' row) and then applied.
    Time per layer (median) and memory: peak CUDA memory on GPU; on CPU the bytes the op allocates.
    Each time is also given as a multiple of the bandwidth floor: a copy of q and k (read once, written once).
(b) position-index building for a batch of long-video samples: ``rope.get_rope_index`` vs. a per-token loop.
(c) a forward+backward training step of a small random Qwen2-VL (default ~100M parameters, head_dim 128):
    VideoRoPE vs. M-RoPE on ONE hooked model instance (the RoPE settings switched; same weights, same inputs),
    paired and interleaved in ABBA order, the ratio of mean step times with a 95% bootstrap interval over the
    pairs (target <= 1.01); stock, un-hooked M-RoPE on the same weights for reference.
fp32 on CPU, bf16 on GPU (``--dtype`` to choose).  Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from videorope_train.rope import (  # noqa: E402
    RopeConfig,
    apply_rotary_eager,
    frequency_axes,
    get_rope_index,
    rotary_cos_sin,
    rotate_half,
    scaled_inv_freq,
)
from videorope_train.rope.rotary import fused_rotary_works, triton_available  # noqa: E402

if triton_available():
    from videorope_train.rope.fused_rotary import fused_apply_rotary  # noqa: E402

SECTION = (16, 24, 24)
HEAD_DIM, Q_HEADS, KV_HEADS, LAYERS = 128, 28, 4, 28
VS, VID, TEXT = 151652, 151656, 100


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, repeats, device, warmup=3):
    for _ in range(warmup):
        fn()
    sync(device)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def memory(fn, device):
    """Peak CUDA bytes above the baseline on GPU; bytes allocated by the call on CPU (profiler)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return sum(max(e.self_cpu_memory_usage, 0) for e in prof.key_averages())


def video_layout(tokens: int):
    """One sample: a little text, one video filling ~tokens, a little text (T x 18 x 32 LLM grid)."""
    per_frame = 18 * 32
    frames = max(1, (tokens - 64) // per_frame)
    ids = [TEXT] * 30 + [VS] + [VID] * (frames * per_frame) + [TEXT] * 33
    return torch.tensor([ids]), torch.tensor([[frames, 36, 64]])


def authors_cos_sin(cos3, sin3, axes):
    """The authors' per-layer rebuild: concatenate one-column slices, each from its channel's axis row."""
    half = axes.numel()
    channel_axes = torch.cat([axes, axes]).tolist()
    cos = torch.cat([cos3[channel_axes[c], ..., c : c + 1] for c in range(2 * half)], dim=-1)
    sin = torch.cat([sin3[channel_axes[c], ..., c : c + 1] for c in range(2 * half)], dim=-1)
    return cos, sin


def bench_rotary(tokens, repeats, device, dtype):
    from transformers.models.qwen2_vl.modeling_qwen2_vl import apply_multimodal_rotary_pos_emb

    cfg = RopeConfig("videorope")
    ids, grid = video_layout(tokens)
    positions, _ = get_rope_index(cfg, ids, video_grid_thw=grid)
    positions = positions.to(device)
    length = positions.shape[-1]
    inv_freq = scaled_inv_freq(cfg, HEAD_DIM, 1e6, SECTION).to(device)
    axes = frequency_axes(cfg, SECTION).to(device)
    # the layout the attention layers pass: projections [B, L, H, D] viewed as [B, H, L, D]
    q = torch.randn(1, length, Q_HEADS, HEAD_DIM, device=device, dtype=dtype).transpose(1, 2)
    k = torch.randn(1, length, KV_HEADS, HEAD_DIM, device=device, dtype=dtype).transpose(1, 2)

    cos, sin = rotary_cos_sin(positions, inv_freq, axes, dtype=dtype)
    # stock M-RoPE's per-row cos/sin [3, B, L, D] (its rotary module's output)
    freqs = positions[..., None].float() * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    cos3, sin3 = emb.cos().to(dtype), emb.sin().to(dtype)

    def ours():
        return apply_rotary_eager(q, k, cos, sin)

    def fused():
        return fused_apply_rotary(q, k, cos, sin)

    def copy_floor():  # read q and k once, write them once: what any rotary must at least move
        return q.clone(), k.clone()

    def stock():
        return apply_multimodal_rotary_pos_emb(q, k, cos3, sin3, list(SECTION))

    def authors():
        c, s = authors_cos_sin(cos3, sin3, axes)
        c, s = c.unsqueeze(1), s.unsqueeze(1)
        return q * c + rotate_half(q) * s, k * c + rotate_half(k) * s

    def build():
        return rotary_cos_sin(positions, inv_freq, axes, dtype=dtype)

    # the authors' form must give this project's result (same allocation), so the race is fair.  fp32: the two build
    # cos/sin by different code paths (and thread splits), each angle p·f carrying up to ~4 ulps of the largest angle
    # (the product's rounding, then cos/sin's own); an output element q·cos ± q'·sin then differs by at most
    # (|q| + |q'|)·Δangle.  A wrong allocation moves elements by O(|q|), far above that.
    if dtype == torch.float32:
        angle_error = 4 * torch.finfo(torch.float32).eps * float(positions.abs().max()) * float(inv_freq.max())
        bound = 2 * max(float(q.abs().max()), float(k.abs().max())) * angle_error
        tol = {"rtol": 1e-5, "atol": max(bound, 1e-5)}
    else:
        tol = {"rtol": 2e-2, "atol": 2e-2}
    for got, want in zip(authors(), ours()):
        torch.testing.assert_close(got, want, **tol)
    contenders = [("this project", ours), ("stock M-RoPE", stock), ("authors' concat", authors)]
    skipped = {}
    if device.type == "cuda" and triton_available() and fused_rotary_works(device):
        for got, want in zip(fused(), ours()):
            torch.testing.assert_close(got, want, **tol)
        contenders.insert(1, ("this project, fused (triton)", fused))
    else:
        skipped["this project, fused (triton)"] = "needs a CUDA device on which Triton compiles it"
    contenders += [("(cos/sin build, once per forward)", build), ("(q, k copy: bandwidth floor)", copy_floor)]
    rows = {}
    for name, fn in contenders:
        rows[name] = {"ms_per_layer": 1e3 * timed(fn, repeats, device), "bytes": memory(fn, device)}
    floor_bytes = 2 * (q.numel() + k.numel()) * q.element_size()  # q and k read once and written once
    floor_ms = rows["(q, k copy: bandwidth floor)"]["ms_per_layer"]
    for row in rows.values():
        row["x floor"] = row["ms_per_layer"] / floor_ms
    return {"tokens": length, "rows": rows, "skipped": skipped, "bandwidth floor bytes": floor_bytes,
            "floor GB/s": floor_bytes / floor_ms / 1e6}


def per_token_loop(cfg, tokens, grids, merge=2):
    """A straightforward per-token VideoRoPE builder (what a first implementation looks like)."""
    rows = [[], [], []]
    grid_iter, position, i = iter(grids), 0.0, 0
    while i < len(tokens):
        if tokens[i] == VID:
            t, h, w = next(grid_iter)
            h, w = h // merge, w // merge
            start = position
            for frame in range(t):
                for r in range(h):
                    for c in range(w):
                        tpos = start + cfg.temporal_stride * frame
                        rows[0].append(tpos), rows[1].append(tpos + r - (h - 1) // 2)
                        rows[2].append(tpos + c - (w - 1) // 2)
            position = start + cfg.temporal_stride * (t - 1) + 1
            i += t * h * w
            continue
        for row in rows:
            row.append(position)
        position += 1
        i += 1
    return rows


def bench_index(tokens, batch, repeats):
    cfg = RopeConfig("videorope")
    ids, grid = video_layout(tokens)
    ids, grids = ids.repeat(batch, 1), grid.repeat(batch, 1)

    def ours():
        return get_rope_index(cfg, ids, video_grid_thw=grids)

    lists = ids.tolist()
    grid_rows = grids.tolist()

    def loop():
        return [per_token_loop(cfg, lists[b], [grid_rows[b]]) for b in range(batch)]

    expected = ours()[0]
    assert torch.equal(torch.tensor(loop()[0], dtype=torch.float64), expected[:, 0].double())
    slow_repeats = max(3, repeats // 4)
    return {"batch": batch, "tokens_per_sample": ids.shape[1],
            "this project ms": 1e3 * timed(ours, repeats, torch.device("cpu"), warmup=1),
            "per-token loop ms": 1e3 * timed(loop, slow_repeats, torch.device("cpu"), warmup=1)}


def step_models(work: Path, device, dtype, hidden_size, num_layers, frames):
    """A random Qwen2-VL hooked with VideoRoPE and the same weights un-hooked (stock), loaded; one video prompt."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from videorope_train.hook.prepare import prepare_model
    from videorope_train.tiny import make_tiny_model

    heads = hidden_size // 128  # head_dim 128 and its (16, 24, 24) sections, as in Qwen2-VL-7B
    base = make_tiny_model(work / "base", hidden_size=hidden_size, num_layers=num_layers, num_heads=heads,
                           num_kv_heads=max(1, heads // 4), mrope_section=SECTION)
    models = {"hook": prepare_model(base, work / "bench-videorope", RopeConfig("videorope")), "stock": base}
    processor = AutoProcessor.from_pretrained(base)
    generator = torch.Generator().manual_seed(0)
    video = torch.randint(0, 255, (frames, 224, 224, 3), generator=generator, dtype=torch.uint8).numpy()
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What happens?"}]}],
        add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], videos=[video], return_tensors="pt",
                       videos_kwargs={"max_pixels": 224 * 224, "min_pixels": 224 * 224})
    inputs = {k: v.to(device) for k, v in inputs.items()}
    loaded = {}
    for name, path in models.items():
        kwargs = {"trust_remote_code": True} if name == "hook" else {}
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, attn_implementation="sdpa", **kwargs)
        loaded[name] = model.to(device).train()
    return loaded, inputs


def rope_switch(model, variants):
    """One hooked model instance, several RoPE settings: ``switch(name)`` installs a variant's positions and
    rotary (no parameters change, so the weights, inputs and memory layout are the same for every variant)."""
    from videorope_train.hook.common import VideoRopeRotaryEmbedding

    inner = model.model
    current = inner.language_model.rotary_emb
    rotaries = {name: VideoRopeRotaryEmbedding(rope, current.head_dim, current.rope_theta, current.mrope_section)
                for name, rope in variants.items()}

    def switch(name):
        inner.rope = variants[name]
        inner.language_model.rotary_emb = rotaries[name].train(model.training)

    return switch


def bootstrap_ratio(numerator, denominator, resamples=4000, seed=0):
    """Ratio of means of paired samples and its 95% percentile-bootstrap interval (pairs resampled together)."""
    a, b = torch.tensor(numerator, dtype=torch.float64), torch.tensor(denominator, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, len(a), (resamples, len(a)), generator=generator)
    ratios = a[picks].mean(dim=1) / b[picks].mean(dim=1)
    low, high = torch.quantile(ratios, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return {"ratio": float(a.mean() / b.mean()), "ci95": [low, high], "pairs": len(a)}


def bench_step(repeats, device, dtype, hidden_size=1024, num_layers=12, frames=16):
    """VideoRoPE vs M-RoPE on one model instance, paired and interleaved (ABBA order), plus stock M-RoPE."""
    with tempfile.TemporaryDirectory(prefix="bench-step-") as work:  # the weights live in memory from here on
        loaded, inputs = step_models(Path(work), device, dtype, hidden_size, num_layers, frames)
    hooked, stock = loaded["hook"], loaded["stock"]
    switch = rope_switch(hooked, {"videorope (hook)": RopeConfig("videorope"), "mrope (hook)": RopeConfig("mrope")})

    def step(model):
        model.zero_grad(set_to_none=True)
        model(**inputs, labels=inputs["input_ids"]).loss.backward()

    def timed_step(name):
        if name == "mrope (stock)":
            model = stock
        else:
            switch(name)
            model = hooked
        sync(device)
        start = time.perf_counter()
        step(model)
        sync(device)
        return time.perf_counter() - start

    # the switch is real: hooked M-RoPE computes stock's loss on the same weights, VideoRoPE another one
    tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    with torch.no_grad():
        losses = {}
        for name in ("mrope (hook)", "videorope (hook)"):
            switch(name)
            losses[name] = hooked(**inputs, labels=inputs["input_ids"]).loss.float()
        torch.testing.assert_close(losses["mrope (hook)"], stock(**inputs, labels=inputs["input_ids"]).loss.float(),
                                   **tol)
        assert not torch.equal(losses["mrope (hook)"], losses["videorope (hook)"])
    names = ["videorope (hook)", "mrope (hook)", "mrope (stock)"]
    for name in names:  # warm up
        timed_step(name), timed_step(name)
    samples = {name: [] for name in names}
    for index in range(repeats):
        order = ["videorope (hook)", "mrope (hook)"]
        for name in order if index % 2 == 0 else order[::-1]:  # ABBA: neither variant always runs first
            samples[name].append(timed_step(name))
        samples["mrope (stock)"].append(timed_step("mrope (stock)"))
    medians = {name: 1e3 * statistics.median(values) for name, values in samples.items()}
    spread = {name: [1e3 * min(values), 1e3 * max(values)] for name, values in samples.items()}
    params = sum(p.numel() for p in hooked.parameters())
    paired = bootstrap_ratio(samples["videorope (hook)"], samples["mrope (hook)"])
    return {"tokens": int(inputs["input_ids"].shape[1]), "parameters": params, "ms": medians, "ms min/max": spread,
            "videorope/mrope (hook)": paired["ratio"], "videorope/mrope (hook) ci95": paired["ci95"],
            "pairs": paired["pairs"],
            "videorope (hook)/mrope (stock)": medians["videorope (hook)"] / medians["mrope (stock)"]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=[8192, 32768])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--index-batch", type=int, default=4)
    parser.add_argument("--step-repeats", type=int, default=20, help="(c) ABBA pairs")
    parser.add_argument("--step-hidden", type=int, default=1024, help="(c) model width, a multiple of 128")
    parser.add_argument("--step-layers", type=int, default=12, help="(c) layers (1024 x 12: ~100M parameters)")
    parser.add_argument("--skip-step", action="store_true")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                        help="auto: bf16 on GPU, fp32 on CPU")
    parser.add_argument("--out", default="bench_rope.json")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(args.dtype)
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    torch.manual_seed(0)
    report = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "dtype": str(dtype),
        "torch": torch.__version__,
        "rotary": [bench_rotary(n, args.repeats, device, dtype) for n in args.tokens],
        "index": [bench_index(n, args.index_batch, args.repeats) for n in args.tokens],
    }
    if not args.skip_step:
        if args.step_hidden % 128:
            parser.error(f"--step-hidden {args.step_hidden}: expected a multiple of 128 (head_dim 128)")
        report["step"] = bench_step(args.step_repeats, device, dtype, args.step_hidden, args.step_layers)

    print(f"device {report['device']} ({report['dtype']}, {report['threads']} threads)")
    for entry in report["rotary"]:
        print(f"\n(a) rotary per layer, {entry['tokens']} tokens, head_dim {HEAD_DIM}, {Q_HEADS}q/{KV_HEADS}kv heads")
        for name, row in entry["rows"].items():
            print(f"  {name:36s} {row['ms_per_layer']:9.3f} ms  {row['x floor']:6.2f}x floor  "
                  f"{row['bytes'] / 2**20:9.1f} MiB")
        print(f"  floor: q, k read + written once = {entry['bandwidth floor bytes'] / 2**20:.1f} MiB "
              f"at {entry['floor GB/s']:.0f} GB/s (a copy)")
        for name, why in entry["skipped"].items():
            print(f"  {name:36s} skipped: {why}")
    for entry in report["index"]:
        print(f"\n(b) position ids, batch {entry['batch']} x {entry['tokens_per_sample']} tokens: "
              f"this project {entry['this project ms']:.2f} ms, per-token loop {entry['per-token loop ms']:.1f} ms "
              f"({entry['per-token loop ms'] / entry['this project ms']:.0f}x)")
    if "step" in report:
        step = report["step"]
        print(f"\n(c) train step, {step['parameters'] / 1e6:.1f}M params, {step['tokens']} tokens: "
              + ", ".join(f"{k} {v:.1f} ms" for k, v in step["ms"].items())
              + f"; videorope/mrope (hook, one model, {step['pairs']} ABBA pairs) = "
              f"{step['videorope/mrope (hook)']:.3f} (95% CI {step['videorope/mrope (hook) ci95'][0]:.3f}-"
              f"{step['videorope/mrope (hook) ci95'][1]:.3f})")
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten {args.out}")
    return report


if __name__ == "__main__":
    main()
