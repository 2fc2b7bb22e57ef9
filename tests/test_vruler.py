"""V-RULER: placement against hand-worked layouts, the authors' record format, and the harness end to end
(tiny model, synthetic set from `make-vruler-data`) through the CLI, resumed."""

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from videorope_train.eval.vruler import (
    RulerRecord,
    insert_needles,
    item_sources,
    load_records,
    mkmv_positions,
    spread_positions,
)

BIN = Path(sys.executable).parent


def test_insertion_layouts_worked_by_hand():
    # needles -1, -2, -3 before haystack frames 0, 2 and 2 of a 5-frame haystack (ties keep record order)
    assert insert_needles(5, [0, 2, 2]) == [-1, 0, 1, -2, -3, 2, 3, 4]
    assert insert_needles(3, [3]) == [0, 1, 2, -1]  # at the very end
    with pytest.raises(ValueError, match="sorted"):
        insert_needles(3, [2, 1])
    # counting / ordering: right after frames linspace(0, 9, 3) = 0, 4, 9 (4.5 truncated)
    assert spread_positions(10, 3) == [1, 5, 10]
    assert insert_needles(10, spread_positions(10, 3)) == [0, -1, 1, 2, 3, 4, -2, 5, 6, 7, 8, 9, -3]
    assert spread_positions(10, 0) == []
    # mkmv: every needle inside the depth bin [40, 60) of 100 frames, sorted
    for trial in range(20):
        positions = mkmv_positions(100, 0.4, 3, random.Random(trial))
        assert positions == sorted(positions) and all(40 <= p <= 59 for p in positions)


def test_vniah_d_distractor_side_worked_by_hand():
    record = RulerRecord(("needle.png",), "q", "a", "distractor.png")
    # depth 0 of 300 frames: the distractor only fits 200 frames after the needle
    sources = item_sources("vniah-d", 300, 0.0, record, 0)
    assert sources.index(-1) == 0 and sources.index(-2) == 201 and len(sources) == 302
    # depth 1: only before (needle after frame 299, distractor before frame 100)
    sources = item_sources("vniah-d", 300, 1.0, record, 0)
    assert sources.index(-2) == 100 and sources.index(-1) == 301
    # 100 frames: fits on neither side -> no distractor
    assert -2 not in item_sources("vniah-d", 100, 0.4, record, 0)


def test_authors_record_format_and_bad_records(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / "b.png").write_bytes(b"x")
    path = tmp_path / "mkmv.json"
    path.write_text(json.dumps([{"path": "['a.png', 'b.png']", "prompt": "Which?", "answer": "B"}]))
    (record,) = load_records(path, tmp_path, "mkmv")
    assert record.images == (str(tmp_path / "a.png"), str(tmp_path / "b.png")) and record.answer == "B"
    path.write_text(json.dumps([{"path": "a.png", "prompt": "Which?", "answer": "B"},
                                {"path": ["a.png", "c.png"], "prompt": "Which?", "answer": "C"}]))
    with pytest.raises(FileNotFoundError, match=r"record 1: image 'c.png' not found"):
        load_records(path, tmp_path, "ordering")
    path.write_text(json.dumps([{"path": "a.png", "prompt": "Which?", "answer": "B"}]))
    with pytest.raises(ValueError, match=r"record 0: missing \['interrupt_path'\]"):
        load_records(path, tmp_path, "vniah-d")
    path.write_text(json.dumps([{"path": "__import__('os')", "prompt": "q", "answer": "A"}]))
    with pytest.raises(FileNotFoundError):  # a name, never evaluated
        load_records(path, tmp_path, "ordering")


@pytest.mark.slow
def test_vruler_cli_runs_every_subtask_and_resumes(hooked_dir, tmp_path):
    data = tmp_path / "data"
    made = subprocess.run([str(BIN / "videorope-train"), "make-vruler-data", str(data), "--frames", "16",
                           "--size", "56x56"], capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr[-2000:]
    out = tmp_path / "out"
    command = [str(BIN / "videorope-train"), "eval", "vruler", "--model", str(hooked_dir("videorope")),
               "--haystack", str(data / "haystack.mp4"), "--images", str(data / "images"), "--out", str(out),
               "--min-frames", "4", "--max-frames", "8", "--frame-interval", "4", "--depth-interval", "0.5",
               "--distractor-gap", "2", "--frame-size", "56x56", "--no-progress"]
    for name in ("mkmv", "counting", "ordering", "vniah-d"):
        command += ["--subtask", f"{name}={data / (name.replace('-', '_') + '.json')}"]
    first = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-4000:]
    result = json.loads((out / "vruler.json").read_text())
    assert set(result["subtasks"]) == {"mkmv", "counting", "ordering", "vniah-d"} and result["complete"]
    assert result["vruler"] == pytest.approx(sum(result["subtasks"].values()) / 4)
    # cells: frame counts 4 and 8 x depths (mkmv 0..0.8 by 0.2; counting/ordering one row; vniah-d 0, 0.5, 1)
    assert len(list((out / "mkmv" / "cells").glob("*.json"))) == 2 * 5
    assert len(list((out / "counting" / "cells").glob("*.json"))) == 2
    assert len(list((out / "vniah-d" / "cells").glob("*.json"))) == 2 * 3
    counting = json.loads((out / "counting" / "cells" / "len8_depth0.json").read_text())
    two, none = counting["records"]
    assert two["needle_frames"] == [1, 9] and two["video_frames"] == 10  # after frames 0 and 7 of 8
    assert none["needle_frames"] == [] and none["video_frames"] == 8
    ordering = json.loads((out / "ordering" / "cells" / "len4_depth0.json").read_text())
    assert ordering["records"][0]["needle_frames"] == [1, 5]
    for name in ("mkmv", "counting", "ordering", "vniah-d"):
        summary = json.loads((out / name / "summary.json").read_text())
        cells = [json.loads(p.read_text())["score"] for p in (out / name / "cells").glob("*.json")]
        assert summary["average"] == pytest.approx(sum(cells) / len(cells))
        assert (out / name / "heatmap.png").is_file()
    assert (out / "vruler.png").is_file()
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("cells/*.json")}
    again = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("cells/*.json")} == stamps  # resumed: nothing recomputed
    assert json.loads((out / "vruler.json").read_text()) == result


@pytest.mark.parametrize("num_frames", [700, 1300, 2700, 2900])
def test_vruler_places_the_vniah_d_needle_as_eval_vniah(num_frames):
    """One placement rule: depth k/10 puts the needle before haystack frame k·N/10 (integer arithmetic), in
    V-RULER's V-NIAH-D as in `eval vniah`. At these lengths int(0.7·N) lands one frame early (0.7·700 =
    489.99999999999994)."""
    from videorope_train.eval.vniah import depth_grid, needle_frame_index

    record = RulerRecord(("needle.png",), "Which?", "A", distractor="other.png")
    for k, depth in enumerate(depth_grid(0.1)):
        expected = k * num_frames // 10
        assert needle_frame_index(depth, num_frames) == expected
        sources = item_sources("vniah-d", num_frames, depth, record, 0, gap=num_frames + 1)  # no room: no distractor
        assert sources.index(-1) == expected and -2 not in sources, (k, depth)


def test_stack_pieces_worked_by_hand():
    from videorope_train.eval.stack import StackRecord, answer_letter, filler_split, question_text

    assert filler_split(10, 0.0) == (10, 0)  # depth 0: the video right before the question
    assert filler_split(10, 1.0) == (0, 10)  # depth 1: at the very start
    assert filler_split(10, 0.35) == (6, 3)  # both floored, as the authors' int()
    assert answer_letter("(B) noise") == "B" and answer_letter(" C") == "C" and answer_letter("none") is None
    assert answer_letter("A video of a dog") is None  # the article is not option A
    assert answer_letter("A video of a dog. Answer: C") == "C" and answer_letter("A cat (D)") == "D"
    assert answer_letter("A") == "A" and answer_letter("A.") == "A" and answer_letter("A) red") == "A"
    assert answer_letter("A red") is None  # ambiguous: read as the article rather than guessed as option A
    record = StackRecord("v.mp4", "What?", ("x", "y"), 1)
    assert question_text(record) == "Question: What?\nOptions:\n(A) x\n(B) y"


def test_stack_decoding_equals_the_models_own_generate(hooked_dir, tmp_path):
    """Chunked prefill + token-by-token decoding with the checkpoint's positions == model.generate on the same
    inputs (the model's own multimodal path), for VideoRoPE, M-RoPE and TAD (whose text positions advance by two)."""

    from videorope_train.eval.model import load_model
    from videorope_train.eval.stack import greedy_answer, load_stack_records, stack_inputs
    from videorope_train.eval.synthetic import make_vruler_data

    paths = make_vruler_data(tmp_path / "data", frames=8, size=(56, 56))
    (record,) = load_stack_records(paths["stack"], tmp_path / "data" / "videos")[:1]
    for variant in ("videorope", "mrope", "tad"):
        lm = load_model(hooked_dir(variant), device="cpu")
        for depth in (0.0, 0.5, 1.0):
            inputs, (before, after) = stack_inputs(lm, record, context=300, depth=depth, video_tokens=64)
            assert before + after > 0
            eos = lm.model.generation_config.eos_token_id
            lm.model.generation_config.eos_token_id = None  # both decode all 6 tokens, nothing suppressed
            try:
                want = lm.model.generate(**inputs, max_new_tokens=6, do_sample=False, output_logits=True,
                                         return_dict_in_generate=True, pad_token_id=lm.tokenizer.pad_token_id)
                got, logits = greedy_answer(lm, inputs, max_new_tokens=6, chunk_size=17)
            finally:
                lm.model.generation_config.eos_token_id = eos
            tokens = want.sequences[0, inputs["input_ids"].shape[1]:]
            assert len(tokens) == 6
            # The logits too, not only their argmax (a tiny random model's greedy tokens do not notice TAD decoding
            # one position short): float32 sums over another chunking differ by a few ulp of logits below 1 (seen:
            # <= 1.5e-7); one position off moves them by ~4e-4.
            torch.testing.assert_close(logits, torch.cat(want.logits).float(), rtol=0, atol=1e-5)
            assert got == tokens.tolist(), (variant, depth)


def test_stack_refuses_cells_of_another_model(hooked_dir, tmp_path):
    """A second checkpoint into the same --out: its cells are not the first one's (V-NIAH and the other V-RULER
    subtasks refuse the same way); the same checkpoint resumes; --overwrite starts over."""
    from videorope_train.eval.stack import load_stack_records, run_stack
    from videorope_train.eval.synthetic import make_vruler_data

    paths = make_vruler_data(tmp_path / "data", frames=8, size=(56, 56))
    records = load_stack_records(paths["stack"], tmp_path / "data" / "videos")[:1]
    out = tmp_path / "out"

    def run(variant, **kwargs):
        return run_stack(str(hooked_dir(variant)), records, out, [300], [0.0], max_new_tokens=1, video_tokens=64,
                         progress=False, **kwargs)

    first = run("videorope")
    cell = out / "cells" / "len300_depth0.json"
    stamp = cell.stat().st_mtime_ns
    with pytest.raises(ValueError, match=r"holds stack cells computed with other settings \(changed: model\)"):
        run("mrope")
    assert run("videorope")["cells"] == first["cells"] and cell.stat().st_mtime_ns == stamp  # resumed
    assert run("mrope", overwrite=True)["model"] == str(hooked_dir("mrope"))
    assert cell.stat().st_mtime_ns != stamp  # recomputed for the second model


@pytest.mark.slow
def test_stack_through_the_vruler_cli(hooked_dir, tmp_path):
    from transformers import AutoTokenizer

    from videorope_train.eval.stack import NOISE

    data = tmp_path / "data"
    assert subprocess.run([str(BIN / "videorope-train"), "make-vruler-data", str(data), "--frames", "8", "--size",
                           "56x56"], capture_output=True, timeout=300).returncode == 0
    out = tmp_path / "out"
    model = hooked_dir("videorope")
    result = subprocess.run([str(BIN / "videorope-train"), "eval", "vruler", "--model", str(model), "--haystack",
                             str(data / "haystack.mp4"), "--stack", str(data / "stack.json"), "--videos",
                             str(data / "videos"), "--stack-contexts", "300,500", "--stack-depths", "0,1",
                             "--stack-video-tokens", "64", "--chunk-size", "64", "--out", str(out), "--no-progress"],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    noise = len(AutoTokenizer.from_pretrained(model)(NOISE, add_special_tokens=False)["input_ids"])
    for context in (300, 500):
        copies = (context - 64) // noise
        first = json.loads((out / "stack" / "cells" / f"len{context}_depth0.json").read_text())
        last = json.loads((out / "stack" / "cells" / f"len{context}_depth1.json").read_text())
        assert [(r["filler_before"], r["filler_after"]) for r in first["records"]] == [(copies, 0)] * 2
        assert [(r["filler_before"], r["filler_after"]) for r in last["records"]] == [(0, copies)] * 2
        assert [r["answer"] for r in first["records"]] == ["A", "B"]
        for cell in (first, last):
            assert cell["score"] == sum(r["correct"] for r in cell["records"]) / 2
            assert all(r["correct"] == int(r["letter"] == r["answer"]) for r in cell["records"])
    summary = json.loads((out / "vruler.json").read_text())
    assert set(summary["subtasks"]) == {"stack"} and summary["complete"]
