"""V-NIAH / V-NIAH-D harness: grid and placement, scoring, positions, splice equivalence, resumability, CLI."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from videorope_train.eval import embeddings as E
from videorope_train.eval import model as M
from videorope_train.eval import results as R
from videorope_train.eval import spliced as S
from videorope_train.eval import vniah as V
from videorope_train.eval.data import load_image, load_needles, resize_rgb
from videorope_train.eval.video import haystack_frames, read_frames, sample_times
from videorope_train.rope import RopeConfig, frequency_axes, get_rope_index, rotary_cos_sin, scaled_inv_freq
from videorope_train.video import VideoInfo

SIZE = (56, 56)  # tiny model: 4x4 patches -> 2x2 = 4 tokens per frame


@pytest.fixture(scope="module")
def vniah_data(tmp_path_factory):
    from videorope_train.eval.synthetic import make_vniah_data

    root = tmp_path_factory.mktemp("vniah_data")
    needles = make_vniah_data(root, frames=24, size=SIZE, fps=4, num_needles=3)
    return root / "haystack.mp4", needles


@pytest.fixture(scope="module")
def loaded(hooked_dir):
    cache = {}

    def get(variant="videorope", **settings):
        key = (variant, tuple(sorted(settings.items())))
        if key not in cache:
            cache[key] = M.load_model(hooked_dir(variant, **settings), device="cpu", attn_implementation="sdpa")
        return cache[key]

    return get


def _embeddings(lm, haystack, needles, count):
    hay = E.encode_frames(lm, haystack_frames(haystack, count, SIZE), SIZE)
    ims = np.stack([resize_rgb(load_image(n.image), SIZE) for n in needles])
    dis = np.stack([resize_rgb(load_image(n.distractor), SIZE) for n in needles])
    return hay, E.encode_frames(lm, ims, SIZE), E.encode_frames(lm, dis, SIZE)


def _items(lm, needles, specs, task="vniah-d", gap=2):
    _, _, tokens = lm.patch_grid(SIZE)
    return [V.make_item(lm, S.prompt_ids(lm, needles[k]), n, d, k, task, tokens, gap) for n, d, k in specs]


# ---------------------------------------------------------------------------------------------- pure parts


def test_grid_needle_index_and_distractor_placement():
    assert V.frame_counts(100, 3000, 200) == list(range(100, 3000, 200))  # 100 ... 2900, as in the papers
    assert V.depth_grid(0.2) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert len(V.depth_grid(0.1)) == 11
    with pytest.raises(ValueError, match="divide 1"):
        V.depth_grid(0.3)
    # LongVA's int(depth * num_frames), without float artefacts (0.6*100 = 60.00000000000001, 0.29*100 = 28.999...)
    assert [V.needle_frame_index(d, 100) for d in V.depth_grid(0.2)] == [0, 20, 40, 60, 80, 100]
    assert V.needle_frame_index(0.3, 10) == 3 and V.needle_frame_index(1.0, 7) == 7

    gap = 200
    assert V.distractor_side(0, 500, gap, 0.1) == "after"  # cannot go before the start
    assert V.distractor_side(500, 500, gap, 0.9) == "before"  # needle at the end
    assert V.distractor_side(250, 500, gap, 0.1) == "before"
    assert V.distractor_side(250, 500, gap, 0.9) == "after"
    assert V.distractor_side(150, 300, gap, 0.3) is None  # fits on neither side (clipped away)
    assert all(V.distractor_side(V.needle_frame_index(d, 100), 100, gap, 0.0) is None for d in V.depth_grid(0.2))
    assert V.distractor_side(200, 400, gap, 0.7) == "after" and V.distractor_side(200, 400, gap, 0.2) == "before"

    draws = [V.distractor_draw(0, 1000, 0.4, k) for k in range(40)]
    assert draws == [V.distractor_draw(0, 1000, 0.4, k) for k in range(40)]  # deterministic: resumable
    assert {V.distractor_side(400, 1000, gap, x) for x in draws} == {"before", "after"}

    for n, index, side in [(500, 0, "after"), (500, 500, "before"), (500, 300, "before"), (500, 100, "after"),
                           (500, 200, "before"), (500, 300, "after"), (300, 150, None)]:
        seq = V.frame_sequence(n, index, side, gap)
        assert sorted(i for i in seq if i >= 0) == list(range(n)) and len(seq) == n + 1 + (side is not None)
        needle = seq.index(V.NEEDLE)
        assert [i for i in seq[:needle] if i >= 0] == list(range(index))  # inserted before haystack frame ⌊d·N⌋
        if side is not None:
            distractor = seq.index(V.DISTRACTOR)
            between = seq[min(needle, distractor) + 1:max(needle, distractor)]
            assert len(between) == gap and all(i >= 0 for i in between)  # 200 haystack frames apart
            assert (distractor < needle) == (side == "before")
    with pytest.raises(ValueError):
        V.frame_sequence(100, 50, "before", gap)


def test_teacher_forced_exact_match_on_hand_made_logits():
    vocab, answer = 6, [4, 2]
    # the last 4 positions of a sequence ... q, a0, a1: rows predict (q -> a0) at -3, (a0 -> a1) at -2
    tail = torch.zeros(4, vocab)
    tail[0, 5] = 9  # an earlier position: not part of the answer
    tail[1, 4] = 3  # predicts a0 = 4
    tail[2, 2] = 3  # predicts a1 = 2
    tail[3, 0] = 9  # after the last answer token: ignored
    rows = S.answer_logits(tail, len(answer))
    assert torch.equal(rows, tail[1:3])
    assert S.teacher_forced_exact_match(rows, answer)
    wrong = tail.clone()
    wrong[2, 3] = 5  # second token wrong -> the whole answer is wrong
    assert not S.teacher_forced_exact_match(S.answer_logits(wrong, 2), answer)
    assert S.teacher_forced_exact_match(S.answer_logits(tail, 1), [2])  # a one-token answer: the row before it
    # batch of left-padded rows with answers of different lengths, sharing one tail window
    batch = torch.stack([tail, torch.zeros(4, vocab)])
    batch[1, 2, 1] = 1
    assert S.score_tail_logits(batch, [answer, [1]]) == [(True, [4, 2]), (True, [1])]
    assert S.score_tail_logits(batch, [answer, [3]])[1][0] is False
    with pytest.raises(ValueError):
        S.teacher_forced_exact_match(rows, [4])


def test_haystack_sampling_and_looping(tmp_path):
    from videorope_train.data.demo import write_video

    info = VideoInfo(frames=10, duration=2.5, fps=4.0)
    times, looped = sample_times(info, 5)
    assert not looped and times == pytest.approx([0.25, 0.75, 1.25, 1.75, 2.25])
    times, looped = sample_times(info, 25)
    assert looped and times[:10] == times[10:20] and len(times) == 25  # every frame in turn, then again
    times, looped = sample_times(info, 3, fps=1.0)
    assert not looped and times == [0.0, 1.0, 2.0]
    assert sample_times(info, 4, fps=1.0)[1]  # 3 s > 2.5 s: looped

    path = write_video(tmp_path / "v.mp4", 12, 64, 64, fps=4)  # square moving left -> right
    frames = read_frames(path, [0.0, 2.9, 1.5, 0.1], (28, 56))
    assert frames.shape == (4, 28, 56, 3)
    assert np.array_equal(frames[0], frames[3])  # same frame on screen at 0.0 s and 0.1 s
    centre = [float(np.argmax(f.astype(int).sum(-1).sum(0))) for f in frames[[0, 2, 1]]]
    assert centre[0] < centre[1] < centre[2]  # the square has moved right by 1.5 s and 2.9 s
    with pytest.warns(UserWarning, match="looped"):
        assert haystack_frames(path, 20, (28, 28)).shape == (20, 28, 28, 3)


def test_needle_layouts(tmp_path, vniah_data):
    import pyarrow as pa
    import pyarrow.parquet as pq

    _, needles_json = vniah_data
    ours = load_needles(needles_json)
    assert [n.answer for n in ours] == ["Red", "Green", "Blue"] and all(n.distractor for n in ours)
    assert ours[0].question.startswith("\nFind the frame")
    # LongVA / VideoRoPE needle_datasets: dataset.json {path, prompt, answer}, images/ beside it
    longva = tmp_path / "needle_datasets"
    (longva / "images").mkdir(parents=True)
    for n in ours:
        (longva / "images" / f"{n.name}.png").write_bytes(Path(n.image).read_bytes())
        (longva / "images" / f"{n.name}_interrupt.png").write_bytes(Path(n.distractor).read_bytes())
    (longva / "dataset.json").write_text(json.dumps(
        [{"path": f"{n.name}.png", "prompt": n.question, "answer": n.answer} for n in ours]))
    plain = load_needles(longva)
    assert [n.name for n in plain] == [n.name for n in ours] and all(n.distractor is None for n in plain)
    paired = load_needles(longva / "dataset.json", distractors=longva / "images")  # NAME_interrupt.png
    assert [Path(n.distractor).read_bytes() for n in paired] == [Path(n.distractor).read_bytes() for n in ours]
    # lmms-lab/v_niah_needles as downloaded: data/test-*.parquet, image = {bytes, path}
    (tmp_path / "hf" / "data").mkdir(parents=True)
    table = pa.table({
        "image": [{"bytes": Path(n.image).read_bytes(), "path": None} for n in ours],
        "question": [n.question for n in ours], "answer": [n.answer for n in ours]})
    pq.write_table(table, tmp_path / "hf" / "data" / "test-00000-of-00001.parquet")
    hf = load_needles(tmp_path / "hf")
    assert [n.answer for n in hf] == ["Red", "Green", "Blue"] and isinstance(hf[0].image, bytes)
    assert np.array_equal(np.asarray(load_image(hf[1].image)), np.asarray(load_image(ours[1].image)))
    with pytest.raises(ValueError, match="no distractor"):
        load_needles(tmp_path / "hf", distractors=longva / "images")  # nameless needles: give a JSON
    with pytest.raises(FileNotFoundError):
        load_needles(tmp_path / "nothing")


# ---------------------------------------------------------------------------------------------- the model


def _capture(lm):
    seen = {}

    def pre(module, args):
        seen["positions"] = args[1].detach().clone()

    def post(module, args, output):
        seen["cos"], seen["sin"] = (t.detach().clone() for t in output)

    rotary = lm.model.model.language_model.rotary_emb
    return seen, [rotary.register_forward_pre_hook(pre), rotary.register_forward_hook(post)]


@pytest.mark.parametrize(
    "variant,settings", [("videorope", {}), ("mrope", {}), ("videorope", {"temporal_stride": 1.5})]
)
def test_positions_fed_to_the_model_are_the_checkpoints_own(loaded, vniah_data, variant, settings):
    haystack, needles_json = vniah_data
    needles = load_needles(needles_json)
    lm = loaded(variant, **settings)
    hay, nee, dis = _embeddings(lm, haystack, needles, 8)
    items = _items(lm, needles, [(8, 0.5, 0), (4, 1.0, 2)])  # different lengths: left padding
    batch = S.assemble_batch(lm, items, lambda it: V.item_frames(it, hay, nee, dis), SIZE)
    seen, hooks = _capture(lm)
    try:
        S.forward_tail_logits(lm.model, batch, keep=3)
    finally:
        for hook in hooks:
            hook.remove()
    config = lm.config
    expected, _ = get_rope_index(
        RopeConfig(variant, **settings), batch.input_ids, None, batch.video_grid_thw, batch.attention_mask,
        spatial_merge_size=2, image_token_id=config.image_token_id, video_token_id=config.video_token_id,
        vision_start_token_id=config.vision_start_token_id)
    assert batch.video_grid_thw.tolist() == [[10, 4, 4], [6, 4, 4]]  # one temporal index per frame (+needle+distractor)
    assert torch.equal(seen["positions"], expected)
    valid = batch.attention_mask[1].bool()
    t_row = seen["positions"][0, 1][valid]
    video = batch.input_ids[1][valid] == config.video_token_id
    step = {"videorope": settings.get("temporal_stride", 2.0), "mrope": 1.0}[variant]
    frame_starts = t_row[video][::4]
    assert torch.allclose(frame_starts.diff().double(), torch.full((5,), step, dtype=torch.float64))


def test_yarn_v_checkpoint_is_evaluated_with_extrapolated_frequencies(loaded, vniah_data):
    haystack, needles_json = vniah_data
    needles = load_needles(needles_json)
    settings = dict(extrapolation="yarn-v", extrapolation_factor=4.0, original_context=64)
    lm = loaded("videorope", **settings)
    hay, nee, dis = _embeddings(lm, haystack, needles, 8)
    batch = S.assemble_batch(lm, _items(lm, needles, [(8, 0.4, 1)]), lambda it: V.item_frames(it, hay, nee, dis), SIZE)
    seen, hooks = _capture(lm)
    try:
        S.forward_tail_logits(lm.model, batch, keep=2)
    finally:
        for hook in hooks:
            hook.remove()
    rope = RopeConfig("videorope", **settings)
    section, head_dim = (2, 3, 3), 16
    axes = frequency_axes(rope, section)
    scaled = rotary_cos_sin(seen["positions"], scaled_inv_freq(rope, head_dim, 1e6, section), axes)
    plain = rotary_cos_sin(seen["positions"], scaled_inv_freq(RopeConfig("videorope"), head_dim, 1e6, section), axes)
    assert torch.equal(seen["cos"], scaled[0]) and torch.equal(seen["sin"], scaled[1])
    # YaRN-V NTK-scales the temporal (lowest, LTA) frequencies: tiny angles here, so compare sin relatively
    temporal = torch.cat([axes, axes]) == 0
    assert not torch.allclose(seen["sin"][..., temporal], plain[1][..., temporal], rtol=0.1, atol=0)
    assert torch.equal(seen["sin"][..., ~temporal], plain[1][..., ~temporal])  # spatial ones untouched


def test_spliced_forward_equals_the_models_own_video_path(loaded, vniah_data):
    """Frames encoded one by one as images (T=1) and spliced in == the model's own forward on a video whose
    frames are each repeated temporal_patch_size (=2) times: one temporal patch per frame, same pixels."""
    haystack, needles_json = vniah_data
    needles = load_needles(needles_json)
    lm = loaded("videorope")
    count = 4
    raw = haystack_frames(haystack, count, SIZE)
    needle_px = resize_rgb(load_image(needles[1].image), SIZE)
    distractor_px = resize_rgb(load_image(needles[1].distractor), SIZE)
    hay = E.encode_frames(lm, raw, SIZE, batch=3)  # batching the tower does not change the embeddings
    nee = E.encode_frames(lm, np.stack([needle_px] * 3), SIZE)
    dis = E.encode_frames(lm, np.stack([distractor_px] * 3), SIZE)
    (item,) = _items(lm, needles, [(count, 0.5, 1)], gap=1)
    assert item.side is not None
    batch = S.assemble_batch(lm, [item], lambda it: V.item_frames(it, hay, nee, dis), SIZE)
    spliced = S.forward_tail_logits(lm.model, batch, keep=batch.input_ids.shape[1])

    pixels = {V.NEEDLE: needle_px, V.DISTRACTOR: distractor_px}
    frames = [raw[s] if s >= 0 else pixels[s] for s in item.sources]
    video = np.stack([f for f in frames for _ in range(2)])
    inputs = lm.processor.video_processor(videos=[video], min_pixels=SIZE[0] * SIZE[1], max_pixels=SIZE[0] * SIZE[1],
                                          do_sample_frames=False, return_tensors="pt")
    assert inputs["video_grid_thw"].tolist() == batch.video_grid_thw.tolist()
    with torch.inference_mode():
        own = lm.model(input_ids=batch.input_ids, pixel_values_videos=inputs["pixel_values_videos"],
                       video_grid_thw=inputs["video_grid_thw"]).logits
    assert torch.allclose(spliced, own, atol=1e-5, rtol=1e-4)


def test_chunked_prefill_equals_one_pass(loaded, vniah_data):
    haystack, needles_json = vniah_data
    needles = load_needles(needles_json)
    lm = loaded("videorope")
    hay, nee, dis = _embeddings(lm, haystack, needles, 8)
    items = _items(lm, needles, [(8, 0.0, 0), (6, 1.0, 1)])
    batch = S.assemble_batch(lm, items, lambda it: V.item_frames(it, hay, nee, dis), SIZE)
    full = S.forward_tail_logits(lm.model, batch, keep=4)
    chunked = S.forward_tail_logits(lm.model, batch, keep=4, chunk_size=7)
    assert torch.allclose(full, chunked, atol=1e-5, rtol=1e-4)
    dynamic = loaded("videorope", extrapolation="dynamic", extrapolation_factor=2.0, original_context=64)
    with pytest.raises(ValueError, match="dynamic"):
        S.forward_tail_logits(dynamic.model, batch, keep=4, chunk_size=7)


# ---------------------------------------------------------------------------------------------- the run


def test_harness_runs_resumes_and_refuses_other_settings(hooked_dir, vniah_data, tmp_path, monkeypatch):
    haystack, needles_json = vniah_data
    settings = V.VNIAHSettings(min_frames=4, max_frames=8, frame_interval=4, depth_interval=0.5, frame_size=SIZE,
                               distractor_gap=2, batch_size=2)
    out = tmp_path / "run"
    model = hooked_dir("videorope")
    summary = V.run_vniah(model, haystack, needles_json, out, settings, progress=False,
                          load_kwargs=dict(device="cpu"))
    assert summary["task"] == "vniah-d" and summary["computed_cells"] == 6 and summary["complete"]
    assert summary["lengths"] == [4, 8] and summary["depths"] == [0.0, 0.5, 1.0]
    cells = sorted((out / "cells").glob("*.json"))
    assert [c.name for c in cells] == sorted(f"{R.cell_name(n, d)}.json" for n in (4, 8) for d in (0.0, 0.5, 1.0))
    scores = []
    for path in cells:
        cell = json.loads(path.read_text())
        assert len(cell["needles"]) == 3 and cell["score"] == sum(e["correct"] for e in cell["needles"]) / 3
        for k, entry in enumerate(cell["needles"]):
            index = V.needle_frame_index(cell["depth"], cell["frames"])
            side = V.distractor_side(index, cell["frames"], 2, V.distractor_draw(0, cell["frames"], cell["depth"], k))
            seq = V.frame_sequence(cell["frames"], index, side, 2)
            assert entry["distractor"] == side and entry["needle_frame"] == seq.index(V.NEEDLE)
            assert entry["video_frames"] == cell["frames"] + 2 and entry["tokens"] > 4 * entry["video_frames"]
        scores.append(cell["score"])
    assert summary["average"] == pytest.approx(sum(scores) / 6)
    assert json.loads((out / "summary.json").read_text())["average"] == summary["average"]
    assert (out / "heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list((out / "cache").glob("haystack-*.pt"))) == 1
    assert len(list((out / "cache").glob("needles-*.pt"))) == 1

    # resumed: nothing to compute, the model is not even loaded, the cells are untouched
    mtimes = {p.name: p.stat().st_mtime_ns for p in cells}
    monkeypatch.setattr(V, "load_model", lambda *a, **k: pytest.fail("loaded the model for a finished run"))
    again = V.run_vniah(model, haystack, needles_json, out, settings, progress=False)
    assert again["computed_cells"] == 0 and again["average"] == summary["average"]
    assert {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")} == mtimes
    # other settings in the same --out: refused before any work
    with pytest.raises(ValueError, match="seed"):
        V.run_vniah(model, haystack, needles_json, out, V.VNIAHSettings(**{**settings.__dict__, "seed": 1}),
                    progress=False)


def test_memory_plan(hooked_dir, capsys):
    from videorope_train.cli import main

    settings = V.VNIAHSettings(min_frames=100, max_frames=300, frame_interval=100, frame_size=SIZE, task="vniah",
                               chunk_size=256)
    rows = V.memory_plan(hooked_dir("videorope"), settings, dtype_bytes=2)
    assert [r["frames"] for r in rows] == [100, 200, 300]
    assert [r["tokens"] for r in rows] == [(n + 1) * 4 + 100 for n in (100, 200, 300)]
    kv = 2 * 2 * 2 * 16 * 2  # layers * (k, v) * kv_heads * head_dim * bf16
    assert rows[1]["kv_cache_gib"] == pytest.approx(rows[1]["tokens"] * kv / 1024**3)
    assert rows[0]["one_pass_gib"] < rows[1]["one_pass_gib"] < rows[2]["one_pass_gib"]
    assert main(["eval", "vniah", "--model", str(hooked_dir("videorope")), "--haystack", "-", "--needles", "-",
                 "--out", "-", "--plan", "--frame-size", "56x56", "--min-frames", "100", "--max-frames", "300"]) == 0
    assert "| 300 |" in capsys.readouterr().out


def test_cli_sweep_and_compare(hooked_dir, vniah_data, tmp_path):
    from videorope_train.cli import main

    data = tmp_path / "data"
    assert main(["make-vniah-data", str(data), "--frames", "12", "--size", "56x56", "--needles", "2"]) == 0
    common = ["--haystack", str(data / "haystack.mp4"), "--needles", str(data / "needles.json"), "--task", "vniah",
              "--min-frames", "3", "--max-frames", "3", "--frame-interval", "1", "--depth-interval", "0.5",
              "--frame-size", "56x56", "--device", "cpu", "--no-progress"]
    sweep = tmp_path / "sweep"
    assert main(["eval", "sweep", "--model", f"videorope={hooked_dir('videorope')}",
                 "--model", f"mrope={hooked_dir('mrope')}", "--out", str(sweep), *common]) == 0
    results = json.loads((sweep / "compare.json").read_text())
    assert set(results) == {"videorope", "mrope"}
    assert all(r["complete"] and r["task"] == "vniah" for r in results.values())
    assert len(list((sweep / "cache").glob("haystack-*.pt"))) == 1  # one frozen tower: encoded once for both
    png = tmp_path / "side_by_side.png"
    runs = [f"a={sweep / 'videorope'}", f"b={sweep / 'mrope'}"]
    assert main(["eval", "compare", "--runs", *runs, "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["eval", "compare", "--runs", f"a={tmp_path / 'missing'}", "--out", str(png)]) == 2
