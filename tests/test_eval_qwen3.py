"""Evaluation on Qwen3-VL checkpoints, hooked and stock.

Qwen3-VL writes a video as a block per temporal patch, each after its time in text, sizes videos by bounds on the
whole video, and adds deepstack features to its first language layers.  Checked against transformers' own code: the
timestamps against ``Qwen3VLProcessor._calculate_timestamps``, the token layout against the processor's output, frame
sizes against its video processor, spliced embeddings (deepstack kept) against the model's own forward on the
processor's inputs; the lmms-eval backend through lmms-eval's CLI; V-NIAH, V-RULER and the stack end to end; and the
invariant that the stock directory and the same weights prepared with ``mrope-interleaved`` give the same results.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SITE
from rope_reference import reference_batch_rows
from videorope_train.eval import embeddings as E
from videorope_train.eval import model as M
from videorope_train.eval import spliced as S
from videorope_train.eval import vniah as V
from videorope_train.eval.data import Needle, load_image, load_needles, resize_rgb
from videorope_train.eval.video import frame_pixel_limit, frame_size, haystack_frames, video_budget

FAMILY = "qwen3_vl"
SIZE = (64, 64)  # tiny Qwen3-VL: 16-px patches, 2x2 merge -> 2x2 = 4 tokens per frame
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def dirs(hooked_dir):
    """The tiny stock Qwen3-VL and the same weights prepared with mrope-interleaved (its stock-equivalent variant)
    and videorope."""
    from videorope_train.hook.prepare import FAMILIES

    pair = hooked_dir(FAMILIES[FAMILY].stock_variant, family=FAMILY)
    assert FAMILIES[FAMILY].stock_variant == "mrope-interleaved"
    return {"stock": (pair / "model.safetensors").resolve().parent, "mrope-interleaved": pair,
            "videorope": hooked_dir("videorope", family=FAMILY)}


@pytest.fixture(scope="module")
def loaded(dirs):
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = M.load_model(dirs[name], device="cpu", attn_implementation="sdpa")
        return cache[name]

    return get


@pytest.fixture(scope="module")
def vniah_data(tmp_path_factory):
    from videorope_train.eval.synthetic import make_vniah_data

    root = tmp_path_factory.mktemp("vniah_qwen3")
    needles = make_vniah_data(root, frames=24, size=SIZE, fps=4, num_needles=3)
    return root / "haystack.mp4", needles


def _metadata(fps, indices):
    from transformers.video_utils import VideoMetadata

    return VideoMetadata(total_num_frames=max(indices) + 1, fps=fps, frames_indices=list(indices))


def _template(lm, question):
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
    return lm.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


class _Request:  # what lmms-eval hands a model: an object whose .args is the request tuple
    def __init__(self, *args):
        self.args = args


# ---------------------------------------------------------------------------------------------- unit pieces


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
def test_video_layout_is_the_processors(hooked_dir, family):
    """prompt_ids + video_ids == what the checkpoint's processor itself writes for a 6-frame video whose frames
    were taken at irregular times: Qwen2-VL one block, Qwen3-VL a block per temporal patch after its time."""
    lm = M.load_model(hooked_dir("videorope", family=family), device="cpu")
    factor = lm.geometry.factor
    frames = np.random.default_rng(0).integers(0, 255, (6, 2 * factor, 3 * factor, 3), dtype=np.uint8)
    indices, fps = [2, 8, 14, 18, 26, 30], 10.0
    needle = Needle(name="n", image="", question="\nWhere is the ball?", answer="Left")
    inputs = lm.processor(text=[_template(lm, needle.question)], videos=[frames], return_tensors="pt",
                          videos_kwargs={"do_resize": False, "do_sample_frames": False,
                                         "video_metadata": [_metadata(fps, indices)]})
    assert inputs["video_grid_thw"].tolist() == [[3, 4, 6]]  # 2x3 tokens per temporal patch
    prompt = S.prompt_ids(lm, needle)
    times = [0.5, 1.6, 2.8]  # by hand: patches (0.2 s, 0.8 s), (1.4, 1.8), (2.6, 3.0)
    ours = list(prompt.prefix) + lm.video_ids(6, times) + list(prompt.suffix)
    assert inputs["input_ids"][0].tolist() == ours
    text = lm.tokenizer.decode(ours)
    if family == "qwen3_vl":
        assert re.findall(r"<([\d.]+) seconds><\|vision_start\|>", text) == ["0.5", "1.6", "2.8"]
        assert text.count("<|vision_start|>") == text.count("<|vision_end|>") == 3
    else:
        assert "seconds" not in text and text.count("<|vision_start|>") == 1


@pytest.mark.parametrize("height, width, frames, context", [(84, 112, 6, "8k"), (720, 1280, 8, "8k"),
                                                           (360, 640, 40, "8k"), (480, 640, 768, "64k"),
                                                           (100, 300, 5, "16k")])
def test_frame_sizes_are_the_qwen3_video_processors(loaded, height, width, frames, context):
    """eval's frame size for a Qwen3-VL checkpoint == the grid its video processor gives the raw video when its
    bounds are the per-frame ones times the frames rounded up to whole temporal patches; the budget is in 32x32-px
    tokens.  By hand, 84x112 at 8k: 6 frames' share caps a frame at 768 tokens (786,432 px); 9,408 px is below the
    144-token floor of 147,456 px: scaled by sqrt(147456 / 9408) = 3.959, sides rounded up to 32-multiples:
    332.6 -> 352, 443.4 -> 448."""
    lm = loaded("stock")
    geometry = lm.geometry
    assert (geometry.factor, geometry.temporal_patch, geometry.whole_video, geometry.token_pixels) == (32, 2, True, 1024)
    budget = video_budget(context, token_pixels=geometry.token_pixels)
    limit = frame_pixel_limit(budget, frames)
    size = frame_size(height, width, budget.min_frame_pixels, limit, geometry, frames)
    padded = frames + frames % 2
    if frames > 40:  # too many frames to hold: the smart resize the video processor calls, with the same bounds
        from transformers.models.qwen3_vl.video_processing_qwen3_vl import smart_resize

        want = smart_resize(frames, height, width, temporal_factor=2, factor=32,
                            min_pixels=budget.min_frame_pixels * padded, max_pixels=limit * padded)
    else:
        grid = lm.processor.video_processor(
            videos=[np.zeros((frames, height, width, 3), dtype=np.uint8)], do_sample_frames=False,
            size={"shortest_edge": budget.min_frame_pixels * padded, "longest_edge": int(limit * padded)},
            return_tensors="pt")["video_grid_thw"][0].tolist()
        assert grid[0] == padded // 2
        want = (grid[1] * 16, grid[2] * 16)
    assert size == tuple(want)
    if (height, width) == (84, 112):
        assert size == (352, 448)


# ---------------------------------------------------------------------------------------------- lmms-eval


@pytest.mark.slow
def test_lmms_eval_cli_generates_on_a_qwen3_vl_checkpoint(dirs, tmp_path):
    """lmms-eval's CLI with --model videorope on a hooked tiny Qwen3-VL (prepared with --video-budget, as the
    README's Qwen2-VL example): the shipped task is scored over its four videos; each prompt carries one timestamp
    per temporal patch, at the sampled frames' times; the positions the rotary consumed are the variant's own on
    the frame-block layout (tests/rope_reference.py)."""
    from videorope_train.cli import main
    from videorope_train.eval import lmms_example

    model_dir = tmp_path / "tiny-qwen3vl-videorope"
    assert main(["prepare-model", "--base", str(dirs["stock"]), "--rope", "videorope", "--video-budget",
                 "--out", str(model_dir)]) == 0
    example, task = tmp_path / "example", lmms_example.TASK
    assert main(["make-lmms-example", str(example)]) == 0
    record = tmp_path / "positions"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [SITE, os.environ.get("PYTHONPATH")])),
               VIDEOROPE_RECORD_POSITIONS=str(record), VIDEOROPE_RECORD_EVAL="1", HF_HOME=str(tmp_path / "hf"),
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    command = [sys.executable, "-m", "lmms_eval", "--model", "videorope", "--model_args",
               f"pretrained={model_dir},context=8k,max_new_tokens=4", "--tasks", task, "--include_path", str(example),
               "--batch_size", "1", "--device", "cpu", "--output_path", str(example / "results"), "--log_samples"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-6000:]
    scores = [json.loads(path.read_text()) for path in (example / "results").rglob("*_results.json")]
    assert len(scores) == 1 and scores[0]["n-samples"][task]["effective"] == 4
    assert 0.0 <= scores[0]["results"][task]["accuracy,none"] <= 100.0

    config = json.loads((model_dir / "config.json").read_text())
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prefills = [batch for batch in map(torch.load, sorted(record.glob("step-*.pt"))) if batch["input_ids"].shape[1] > 1]
    assert len(prefills) == 4
    grids = []
    for batch in prefills:
        (t, h, w), = batch["video_grid_thw"].tolist()
        grids.append((t, h, w))
        text = tokenizer.decode(batch["input_ids"][0])
        # 2 fps: frame k at (k + 1/2) / 2 s, so temporal patch j (frames 2j, 2j + 1) at j + 1/2 s
        assert re.findall(r"<([\d.]+) seconds><\|vision_start\|>", text) == [f"{j + 0.5:.1f}" for j in range(t)]
        assert text.count("<|vision_start|>") == t
        mask = torch.ones_like(batch["input_ids"])
        (valid, expected, _), = reference_batch_rows("videorope", config, batch["input_ids"], mask, None,
                                                     batch["video_grid_thw"], stride=2.0, frame_blocks=True)
        assert torch.equal(batch["rotary_position_ids"][:, 0].to(torch.float64), expected)
    # The example's videos, H x W: 84x112 (6 frames at 2 fps), 72x128 (8), 128x72 (10), 56x140 (12). At 8k a frame
    # may keep 768 tokens of 32x32 px (786,432 px); all are below the 144-token floor of 147,456 px, so scaled up by
    # beta = sqrt(147456 / (H * W)) keeping the aspect ratio, each side rounded up to a multiple of 32 (Qwen3-VL's
    # smart resize, the bounds times the frames):
    #   84x112: beta = 3.959 -> 332.6 -> 352, 443.4 -> 448;  72x128 and 128x72: beta = 4 -> 288x512, 512x288
    #   56x140: beta = 4.337 -> 242.9 -> 256, 607.1 -> 608
    # -> grids of 16-px patches: 22x28, 18x32, 32x18 and 16x38 (with 28x28-px tokens the floor, 112,896 px, would
    # give 84x112 -> 320x416, 20x26).
    assert sorted(grids) == [(3, 22, 28), (4, 18, 32), (5, 32, 18), (6, 16, 38)], grids


def test_lmms_backend_times_the_sampled_frames_and_the_stock_pair_agrees(dirs, tmp_path):
    """In-process: 4 frames of a 2.4 s clip (not 2 fps) carry their own times; the stock directory and its
    mrope-interleaved twin build the same prompt, generate the same answer and score a continuation the same
    (stock Qwen3-VL places positions by mm_token_type_ids, which must cover the appended continuation)."""
    from videorope_train.data.demo import write_video
    from videorope_train.eval.lmms import VideoRope

    video = str(write_video(tmp_path / "clip.mp4", frames=12, width=84, height=56, fps=5))
    results = {}
    for name in ("stock", "mrope-interleaved"):
        backend = VideoRope(pretrained=str(dirs[name]), context="8k", device="cpu", frames=4, max_new_tokens=3)
        backend.task_dict = {"t": {"test": [{"video": video}]}}
        inputs = backend.prompt_inputs("Describe the video.", [video])
        text = backend.tokenizer.decode(inputs["input_ids"][0])
        # 12 frames at 5 fps = 2.4 s; 4 frames evenly at (k + 1/2) * 0.6 s = 0.3, 0.9, 1.5, 2.1 s: two temporal
        # patches, at (0.3 + 0.9) / 2 = 0.6 s and (1.5 + 2.1) / 2 = 1.8 s. 56x84 below the 144-token floor:
        # beta = sqrt(147456 / 4704) = 5.599 -> 313.5 -> 320, 470.3 -> 480: 20x30 patches.
        assert inputs["video_grid_thw"].tolist() == [[2, 20, 30]]
        assert re.findall(r"<([\d.]+) seconds><\|vision_start\|>", text) == ["0.6", "1.8"]
        (answer,) = backend.generate_until([_Request("Describe the video.", {"max_new_tokens": 3},
                                                     lambda doc: [doc["video"]], 0, "t", "test")])
        continuation = backend.tokenizer(" a red ball", add_special_tokens=False)["input_ids"]
        results[name] = (inputs["input_ids"], answer, backend.continuation_score(inputs, continuation))
    stock, twin = results["stock"], results["mrope-interleaved"]
    assert torch.equal(stock[0], twin[0]) and stock[1] == twin[1]
    assert stock[2][0] == pytest.approx(twin[2][0], abs=1e-4) and stock[2][1] == twin[2][1]


# ---------------------------------------------------------------------------------------------- spliced harnesses


def _encoded(lm, haystack, needles, count):
    hay = E.encode_frames(lm, haystack_frames(haystack, count, SIZE), SIZE, batch=3)
    ims = np.stack([resize_rgb(load_image(n.image), SIZE) for n in needles])
    dis = np.stack([resize_rgb(load_image(n.distractor), SIZE) for n in needles])
    return hay, E.encode_frames(lm, ims, SIZE), E.encode_frames(lm, dis, SIZE)


def _batch(lm, needles, embeds, specs, frame_rate=1.0):
    hay, nee, dis = embeds
    _, _, tokens = lm.patch_grid(SIZE)
    items = [V.make_item(lm, S.prompt_ids(lm, needles[k]), n, d, k, "vniah-d", tokens, 2, 0, frame_rate)
             for n, d, k in specs]
    return items, S.assemble_batch(lm, items, lambda it: V.item_frames(it, hay, nee, dis), SIZE)


@pytest.mark.parametrize("name", ["videorope", "stock"])
def test_spliced_forward_equals_the_models_own_video_path(loaded, vniah_data, name):
    """Frames encoded one by one as images, spliced in with their deepstack features == the model's own forward on
    the processor's inputs for the video whose frames are each repeated twice (a temporal patch per frame, both
    copies taken at k / 2 s): the same tokens (timestamps included), the same logits.  Without the deepstack
    features the logits are not the model's."""
    haystack, needles_json = vniah_data
    needles = load_needles(needles_json)
    lm = loaded(name)
    raw = haystack_frames(haystack, 4, SIZE)
    embeds = _encoded(lm, haystack, needles, 4)
    assert embeds[0].shape == (4, 4, 64 * 3)  # per token: the tower's output and 2 deepstack layers' features
    (item,), batch = _batch(lm, needles, embeds, [(4, 0.5, 1)], frame_rate=2.0)
    assert item.side is not None and batch.deepstack is not None
    length = batch.input_ids.shape[1]
    spliced = S.forward_tail_logits(lm.model, batch, keep=length)

    pixels = {V.NEEDLE: resize_rgb(load_image(needles[1].image), SIZE),
              V.DISTRACTOR: resize_rgb(load_image(needles[1].distractor), SIZE)}
    frames = [raw[s] if s >= 0 else pixels[s] for s in item.sources]
    video = np.stack([f for f in frames for _ in range(2)])
    indices = [k for k in range(len(frames)) for _ in range(2)]
    inputs = lm.processor(text=[_template(lm, needles[1].question) + needles[1].answer], videos=[video],
                          return_tensors="pt", videos_kwargs={"do_resize": False, "do_sample_frames": False,
                                                              "video_metadata": [_metadata(2.0, indices)]})
    assert inputs["input_ids"].tolist() == batch.input_ids.tolist()
    assert inputs["video_grid_thw"].tolist() == batch.video_grid_thw.tolist() == [[6, 4, 4]]
    with torch.inference_mode():
        own = lm.model(**inputs).logits
        without = S.language_forward(lm.model, batch.inputs_embeds, batch.position_ids, None, length).logits
    torch.testing.assert_close(spliced, own, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(without, own, atol=1e-3)


@pytest.mark.parametrize("name", ["videorope", "stock"])
def test_positions_and_chunked_prefill(loaded, vniah_data, name):
    """A left-padded batch: the positions fed are the variant's own on the frame-block layout, token by token
    (tests/rope_reference.py; stock Qwen3-VL's are interleaved M-RoPE's, placed as M-RoPE), and a chunked prefill
    (chunks cutting through frame blocks, deepstack features windowed) gives the one-pass logits."""
    haystack, needles_json = vniah_data
    needles = load_needles(needles_json)
    lm = loaded(name)
    _, batch = _batch(lm, needles, _encoded(lm, haystack, needles, 8), [(8, 0.0, 0), (4, 1.0, 2)])
    assert batch.attention_mask is not None and batch.video_grid_thw.tolist() == [[10, 4, 4], [6, 4, 4]]
    config = json.loads((Path(lm.path) / "config.json").read_text())
    samples = reference_batch_rows(lm.rope.variant, config, batch.input_ids, batch.attention_mask, None,
                                   batch.video_grid_thw, stride=2.0, frame_blocks=True)
    for row, (valid, expected, _) in enumerate(samples):
        assert torch.equal(batch.position_ids[:, row][:, valid].to(torch.float64), expected), row
    full = S.forward_tail_logits(lm.model, batch, keep=4)
    chunked = S.forward_tail_logits(lm.model, batch, keep=4, chunk_size=7)
    torch.testing.assert_close(chunked, full, atol=1e-5, rtol=1e-4)


def test_vniah_and_vruler_end_to_end_and_the_stock_pair_agrees(dirs, loaded, vniah_data, tmp_path):
    """V-NIAH-D (chunked, batched) and every V-RULER subtask on the stock directory, its mrope-interleaved twin and
    a VideoRoPE checkpoint: complete grids; stock and twin give the same cells and the same logits, VideoRoPE
    other logits."""
    from videorope_train.eval.synthetic import make_vruler_data
    from videorope_train.eval.vruler import run_vruler

    haystack, needles_json = vniah_data
    settings = V.VNIAHSettings(min_frames=4, max_frames=8, frame_interval=4, depth_interval=0.5, frame_size=SIZE,
                               distractor_gap=2, batch_size=2, chunk_size=9)
    data = tmp_path / "vruler"
    paths = make_vruler_data(data, frames=16, size=SIZE)
    tasks = {name: (paths[name], data / "images") for name in ("mkmv", "counting", "ordering", "vniah-d")}

    def cells(out):
        return {str(p.relative_to(out)): json.loads(p.read_text()) for p in sorted(out.rglob("cells/*.json"))}

    runs = {}
    for name in ("stock", "mrope-interleaved", "videorope"):
        out = tmp_path / name
        summary = V.run_vniah(loaded(name), haystack, needles_json, out / "vniah", settings, progress=False)
        assert summary["complete"] and summary["computed_cells"] == 6 and summary["task"] == "vniah-d"
        assert summary["tokens_per_frame"] == 4
        assert summary["rope"]["variant"] == {"stock": "mrope-interleaved"}.get(name, name)  # stock: interleaved
        ruler = run_vruler(loaded(name), haystack, tasks, out / "vruler", settings, progress=False)
        assert ruler["complete"] and set(ruler["subtasks"]) == set(tasks)
        runs[name] = {k: {key: v for key, v in cell.items() if key != "model"} for k, cell in cells(out).items()}
    assert len(runs["stock"]) == 6 + 2 * 5 + 2 + 2 + 2 * 3
    assert runs["stock"] == runs["mrope-interleaved"]
    entry = runs["stock"]["vniah/cells/len8_depth0.5.json"]["needles"][0]
    assert entry["tokens"] > (4 + 2 + 5) * entry["video_frames"]  # per frame: pads, start, end and its time

    needles = load_needles(needles_json)
    logits = {}
    for name in ("stock", "mrope-interleaved", "videorope"):
        lm = loaded(name)
        _, batch = _batch(lm, needles, _encoded(lm, haystack, needles, 8), [(8, 0.5, 0), (4, 0.0, 1)])
        logits[name] = S.forward_tail_logits(lm.model, batch, keep=batch.input_ids.shape[1])
    valid = batch.attention_mask.bool()
    torch.testing.assert_close(logits["stock"][valid], logits["mrope-interleaved"][valid], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(logits["videorope"][valid], logits["stock"][valid], atol=1e-4)


@pytest.mark.parametrize("name", ["videorope", "stock"])
def test_stack_decoding_equals_the_models_own_generate(loaded, tmp_path, name):
    """The stack's chunked prefill (deepstack windowed) + token-by-token decoding == model.generate on the
    processor's inputs (timestamps in the prompt); stock and its twin give the same logits."""
    from videorope_train.eval.stack import greedy_answer, load_stack_records, stack_inputs
    from videorope_train.eval.synthetic import make_vruler_data

    paths = make_vruler_data(tmp_path / "data", frames=8, size=(56, 56))
    (record,) = load_stack_records(paths["stack"], tmp_path / "data" / "videos")[:1]
    twins = [name] + (["mrope-interleaved"] if name == "stock" else [])
    got_logits = []
    for model_name in twins:
        lm = loaded(model_name)
        inputs, (before, after) = stack_inputs(lm, record, context=400, depth=0.5, video_tokens=64)
        assert before and after and "seconds>" in lm.tokenizer.decode(inputs["input_ids"][0])
        eos = lm.model.generation_config.eos_token_id
        lm.model.generation_config.eos_token_id = None  # both decode all 5 tokens
        try:
            want = lm.model.generate(**inputs, max_new_tokens=5, do_sample=False, output_logits=True,
                                     return_dict_in_generate=True, pad_token_id=lm.tokenizer.pad_token_id)
            got, logits = greedy_answer(lm, inputs, max_new_tokens=5, chunk_size=17)
        finally:
            lm.model.generation_config.eos_token_id = eos
        torch.testing.assert_close(logits, torch.cat(want.logits).float(), rtol=0, atol=1e-5)
        assert got == want.sequences[0, inputs["input_ids"].shape[1]:].tolist()
        got_logits.append(logits)
    if len(got_logits) == 2:
        torch.testing.assert_close(got_logits[0], got_logits[1], rtol=1e-5, atol=1e-5)


def test_memory_plan_counts_a_block_per_frame(dirs):
    """--plan reads config.json only: 4 tokens per 64x64 frame, and on Qwen3-VL about 10 more per frame for its
    block (its time, start and end)."""
    settings = V.VNIAHSettings(min_frames=100, max_frames=300, frame_interval=100, frame_size=SIZE, task="vniah")
    for name in ("stock", "videorope"):
        rows = V.memory_plan(dirs[name], settings)
        assert [r["tokens"] for r in rows] == [(n + 1) * (4 + 10) + 100 for n in (100, 200, 300)]


@pytest.mark.parametrize("family, size", [("qwen2_vl", (252, 448)), ("qwen3_vl", (288, 512)), ("qwen3_vl_moe", (288, 512))])
def test_default_frame_size_is_144_of_the_checkpoints_tokens(hooked_dir, family, size, tmp_path):
    """`eval vniah/vruler` without --frame-size: 9x16 tokens of the checkpoint (28 or 32 pixels each), read from its
    config before loading; a missing directory is named as such."""
    from videorope_train.eval.cli import default_frame_size

    assert default_frame_size(str(hooked_dir("videorope", family=family))) == size
    with pytest.raises(FileNotFoundError, match="does not exist"):
        default_frame_size(str(tmp_path / "nowhere"))
