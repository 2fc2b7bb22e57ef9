"""The lmms-eval backend: `python -m lmms_eval --model videorope` (lmms-eval's real CLI) on a hooked tiny model.

The README's example, run as the README gives it: the task the package ships (`videorope-train make-lmms-example`,
eval/lmms_tiny_task/, four synthetic mp4s of different aspect ratios) through the entry point the package registers.
Checked: the score file holds the task's metric over every sample; the positions the model used (captured where the
rotary consumes them) are the checkpoint's own variant's, token by token against tests/rope_reference.py; the videos
went in as the authors' evaluation feeds them (2 fps, frames scaled to the per-frame floor keeping the aspect
ratio; grids worked by hand).
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import SITE
from rope_reference import IMG, VID, reference_positions

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def readme_commands(marker: str) -> str:
    """The README's bash block that contains ``marker``: what a user types, run as it stands."""
    blocks = [block for block in re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S)
              if marker in block]
    assert len(blocks) == 1, f"{len(blocks)} README blocks contain {marker!r}"
    return blocks[0]


@pytest.mark.slow
def test_the_readme_example_scores_the_shipped_task_with_the_checkpoints_positions(tiny_base, tmp_path):
    """The README's example (`make-lmms-example`, then lmms-eval's CLI) run verbatim from a directory holding
    work_dirs/tiny-qwen2vl-videorope as `make demo` prepares it."""
    from videorope_train.cli import main
    from videorope_train.eval import lmms_example

    model_dir = tmp_path / "work_dirs" / "tiny-qwen2vl-videorope"
    assert main(["prepare-model", "--base", str(tiny_base), "--rope", "videorope", "--temporal-stride", "2",
                 "--video-budget", "--out", str(model_dir)]) == 0
    record = tmp_path / "positions"
    env = dict(os.environ, PATH=os.pathsep.join([str(BIN), os.environ["PATH"]]),  # `python`, `videorope-train`
               PYTHONPATH=os.pathsep.join(filter(None, [SITE, os.environ.get("PYTHONPATH")])),
               VIDEOROPE_RECORD_POSITIONS=str(record), VIDEOROPE_RECORD_EVAL="1", HF_HOME=str(tmp_path / "hf"))
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", readme_commands("make-lmms-example")], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-6000:]

    example, task = tmp_path / "work_dirs" / "lmms-example", lmms_example.TASK
    for name in lmms_example.TASK_FILES:  # the task that ran is the one the package ships
        assert (example / name).read_bytes() == (lmms_example.SHIPPED_TASK_DIR / name).read_bytes(), name
    scores = [json.loads(path.read_text()) for path in (example / "results").rglob("*_results.json")]
    assert len(scores) == 1, list((example / "results").rglob("*"))
    accuracy = scores[0]["results"][task]["accuracy,none"]
    assert 0.0 <= accuracy <= 100.0 and scores[0]["n-samples"][task]["effective"] == 4
    samples = [json.loads(line) for path in (example / "results").rglob(f"*samples_{task}*.jsonl")
               for line in path.read_text().splitlines()]
    assert len(samples) == 4
    assert accuracy == pytest.approx(100.0 * sum(s["accuracy"]["correct"] for s in samples) / 4)

    config = json.loads((model_dir / "config.json").read_text())
    merge = config["vision_config"]["spatial_merge_size"]
    prefills = [batch for batch in map(torch.load, sorted(record.glob("step-*.pt")))
                if batch["input_ids"].shape[1] > 1]  # the prompt's forward, not the decoding steps
    assert len(prefills) == 4
    grids = []
    for batch in prefills:
        grid = batch["video_grid_thw"]
        assert grid is not None and grid.shape[0] == 1
        t, h, w = grid[0].tolist()
        grids.append((t, h, w))
        tokens = batch["input_ids"][0].tolist()
        as_reference = {config["video_token_id"]: VID, config["image_token_id"]: IMG}
        rows, _ = reference_positions("videorope", [as_reference.get(x, x) for x in tokens], [(t, h, w)],
                                      stride=2.0, merge=merge)
        assert torch.equal(batch["rotary_position_ids"][:, 0].to(torch.float64), torch.tensor(rows, dtype=torch.float64))
    # The example's videos (eval/lmms_example.py VIDEOS), H x W px: 4:3 84x112, 12 frames at 4 fps = 3 s -> 6 frames
    # at 2 fps; 16:9 72x128, 32 at 8 fps = 4 s -> 8; 9:16 128x72, 30 at 6 fps = 5 s -> 10; 5:2 56x140, 12 at 2 fps =
    # 6 s -> 12: 3, 4, 5 and 6 temporal patches. At 8k a frame may keep min(768 * 784 = 602,112, 2 * 7680 * 784 /
    # frames >= 1,003,520) = 602,112 px; all four are below the 144-token floor of 112,896 px even rounded to
    # multiples of 28, so they are scaled up by beta = sqrt(112,896 / (H * W)), keeping the aspect ratio, each side
    # rounded up to a multiple of 28:
    #   84x112: beta = sqrt(12) = 3.4641; 84 * beta = 290.98 -> 308 (11 * 28), 112 * beta = 387.98 -> 392 (14 * 28)
    #   72x128 and 128x72: beta = sqrt(12.25) = 3.5 -> 252x448 and 448x252 (9 and 16 * 28), exactly
    #   56x140: beta = sqrt(14.4) = 3.7947; 56 * beta = 212.50 -> 224 (8 * 28), 140 * beta = 531.26 -> 532 (19 * 28)
    # -> grids of 14-px patches (H / 14, W / 14): 22x28, 18x32, 32x18 and 16x38.
    assert sorted(grids) == [(3, 22, 28), (4, 18, 32), (5, 32, 18), (6, 16, 38)], grids


def test_the_example_task_finds_its_files_wherever_its_directory_is(tmp_path):
    """`make-lmms-example`'s directory, moved after writing, loaded by lmms-eval's own YAML loader: the documents
    resolve next to the YAML, the functions are the copied utils.py's, its doc_to_visual finds each video (of the
    length written: frames / fps), and each answer letter names the video's aspect ratio."""
    from lmms_eval.utils import load_yaml_config

    from videorope_train.cli import main
    from videorope_train.eval.lmms_example import TASK, VIDEOS
    from videorope_train.video import probe_video

    assert main(["make-lmms-example", str(tmp_path / "written")]) == 0
    example = (tmp_path / "written").rename(tmp_path / "moved")
    config = load_yaml_config(str(example / f"{TASK}.yaml"))
    docs_file = Path(config["dataset_kwargs"]["data_files"]["test"])
    assert docs_file == example / "docs.jsonl"
    docs = [json.loads(line) for line in docs_file.read_text().splitlines()]
    assert len(docs) == len(VIDEOS) == 4
    for doc, (ratio, _, _, fps, frames) in zip(docs, VIDEOS):
        (video,) = config["doc_to_visual"](doc)
        assert Path(video).parent == example / "videos" and probe_video(video).duration == frames / fps
        assert doc["options"]["ABCD".index(doc["answer"])] == ratio


def test_bad_arguments_are_named_before_the_model_loads(tmp_path, monkeypatch):
    from videorope_train.eval import model as model_module
    from videorope_train.eval.lmms import VideoRope

    monkeypatch.setattr(model_module, "default_device", lambda: pytest.fail("a model started loading"))
    with pytest.raises(FileNotFoundError, match=f"checkpoint directory {tmp_path / 'nowhere'} does not exist"):
        VideoRope(pretrained=str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        VideoRope(pretrained=str(tmp_path / "empty"))
    with pytest.raises(ValueError, match=r"context='12k' is neither one of the papers' contexts \(8k, 16k, 32k, 64k\)"):
        VideoRope(pretrained=str(tmp_path / "nowhere"), context="12k")  # the context first: nothing opened
    with pytest.raises(ValueError, match="unknown model_args"):
        VideoRope(pretrained=str(tmp_path / "nowhere"), frame=4)


class _Request:  # what lmms-eval hands a model: an object whose .args is the request tuple
    def __init__(self, *args):
        self.args = args


@pytest.fixture(scope="module")
def backend(hooked_dir, tmp_path_factory):
    from videorope_train.data.demo import write_video
    from videorope_train.eval.lmms import VideoRope

    video = write_video(tmp_path_factory.mktemp("lmms") / "clip.mp4", frames=4, width=56, height=56, fps=2)
    model = VideoRope(pretrained=str(hooked_dir("videorope")), context="8k", device="cpu", max_new_tokens=4)
    model.task_dict = {"t": {"test": [{"video": str(video)}]}}
    return model


def test_loglikelihood_equals_the_generation_path(backend):
    """Teacher-forced scores (one forward) == `generate`'s own logits (KV cache, token by token): for the model's
    greedy tokens (flagged greedy), for them with another last token (not greedy, lower by exactly the difference
    of the two last-step log-probs), and through `loglikelihood` for a text continuation, whose tokens are forced
    into `generate` to get the reference."""
    import torch

    tokenizer, video = backend.tokenizer, backend.task_dict["t"]["test"][0]["video"]
    context, visual = "Describe the video.", (lambda doc: [doc["video"]])
    inputs = backend.prompt_inputs(context, [video])
    start = inputs["input_ids"].shape[1]

    def reference(forced=None, steps=2):
        allowed = None if forced is None else (lambda batch, ids: [forced[ids.shape[0] - start]])
        with torch.inference_mode():
            out = backend.model.generate(**inputs, max_new_tokens=steps, do_sample=False, output_logits=True,
                                         return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id,
                                         prefix_allowed_tokens_fn=allowed)
        tokens = out.sequences[0, start:].tolist()
        steps = [step[0].float().log_softmax(-1) for step in out.logits]  # raw logits: before the forcing
        return tokens, sum(float(s[t]) for s, t in zip(steps, tokens)), all(
            int(s.argmax()) == t for s, t in zip(steps, tokens)), steps

    tokens, want, _, steps = reference()
    logprob, greedy = backend.continuation_score(inputs, tokens)
    assert greedy and logprob == pytest.approx(want, abs=1e-4)
    other = tokens[:-1] + [(tokens[-1] + 1) % len(tokenizer)]
    worse, greedy = backend.continuation_score(inputs, other)
    assert not greedy and worse == pytest.approx(want - float(steps[-1][tokens[-1]] - steps[-1][other[-1]]),
                                                 abs=1e-4)
    text = " the video"
    forced = tokenizer(text, add_special_tokens=False)["input_ids"]
    got_tokens, want, want_greedy, _ = reference(forced, steps=len(forced))
    assert got_tokens == forced
    (logprob, greedy), = backend.loglikelihood([_Request(context, text, visual, 0, "t", "test")])
    assert logprob == pytest.approx(want, abs=1e-4) and greedy == want_greedy


def test_multi_round_follows_the_task_protocol(backend):
    """Round 0 answers the request's context; round 1 the context the task builds from round 0's answer; the task
    ends it at round 2. Each round's answer equals a single-round generation on the same context and video."""
    visual = lambda doc: [doc["video"]]  # noqa: E731
    seen = []

    def doc_to_text(doc, previous_output, round_idx, previous_round_info):
        seen.append((list(previous_output), round_idx, previous_round_info))
        if round_idx == 2:
            return None, None, True, previous_output, previous_round_info
        return [doc["video"]], f"You said: {previous_output[-1]}. Again?", False, previous_output, {"round": round_idx}

    (answers,) = backend.generate_until_multi_round(
        [_Request("What moves?", {"max_new_tokens": 3}, visual, doc_to_text, 0, "t", "test")])
    first, second = backend.generate_until([
        _Request("What moves?", {"max_new_tokens": 3}, visual, 0, "t", "test"),
        _Request(f"You said: {answers[0]}. Again?", {"max_new_tokens": 3}, visual, 0, "t", "test")])
    assert answers == (first.strip(), second.strip())
    assert seen == [([answers[0]], 1, None), (list(answers), 2, {"round": 1})]


def test_consecutive_questions_on_one_video_decode_it_once(backend, tmp_path, monkeypatch):
    """The backend keeps the last video's frames: a second question on the same file does not decode it again and
    gets the same inputs as a backend that never saw it; another file, or the same path rewritten, is read anew."""
    import torch

    from videorope_train.data.demo import write_video
    from videorope_train.eval import lmms

    from videorope_train.eval import video

    reads = []
    real_decode = video.decode_frames
    monkeypatch.setattr(video, "decode_frames", lambda *args: reads.append(str(args[3])) or real_decode(*args))
    first = write_video(tmp_path / "a.mp4", frames=6, width=56, height=84, fps=2, seed=1)
    other = write_video(tmp_path / "b.mp4", frames=8, width=84, height=56, fps=2, seed=2)
    backend.videos.last = None
    one = backend.prompt_inputs("Question one?", [str(first)])
    two = backend.prompt_inputs("Question two?", [str(first)])
    assert reads == [str(first)]
    fresh = lmms.VideoRope(pretrained=backend.loaded, context="8k").prompt_inputs("Question two?", [str(first)])
    assert reads == [str(first)] * 2
    for key in ("pixel_values_videos", "video_grid_thw", "input_ids"):
        assert torch.equal(two[key], fresh[key])
    assert torch.equal(one["pixel_values_videos"], two["pixel_values_videos"])
    backend.prompt_inputs("Question three?", [str(other)])
    assert reads[-1] == str(other) and len(reads) == 3
    write_video(tmp_path / "b.mp4", frames=10, width=84, height=56, fps=2, seed=3)  # same path, new content
    grid = backend.prompt_inputs("Question four?", [str(other)])["video_grid_thw"]
    assert len(reads) == 4 and grid[0, 0].item() == 5  # 5 s at 2 fps = 10 frames = 5 temporal patches


def test_the_next_requests_video_is_read_while_this_one_generates(backend, tmp_path, monkeypatch):
    """Questions A, A, B: while the second question on A generates, B is already being decoded on the reader thread
    (the generate of that question waits for it, so the overlap is forced, not hoped for); each video is decoded
    once; the answers are those of plain one-at-a-time generation. A file that cannot be decoded fails its own
    request with the error a direct read gives."""
    import threading

    from videorope_train.data.demo import write_video
    from videorope_train.eval import lmms

    video_a = str(write_video(tmp_path / "a.mp4", frames=6, width=56, height=56, fps=2, seed=4))
    video_b = str(write_video(tmp_path / "b.mp4", frames=4, width=84, height=56, fps=2, seed=5))
    from videorope_train.eval import video

    reads, b_started = [], threading.Event()
    real_read = video.read_video

    def spy(path, *args):
        reads.append((path, threading.current_thread().name))
        if path == video_b:
            b_started.set()
        return real_read(path, *args)

    generate, calls = backend.model.generate, []

    def generate_waiting_for_b(**kwargs):
        calls.append(len(calls))
        if len(calls) == 2:  # the second question on A: B must be on its way
            assert b_started.wait(timeout=60), "B was not being read while A's second question generated"
        return generate(**kwargs)

    docs = [{"video": video_a}, {"video": video_a}, {"video": video_b}]
    gen = {"max_new_tokens": 3, "until": []}
    expected = [backend._generate(f"Q{i}?", [doc["video"]], gen) for i, doc in enumerate(docs)]
    monkeypatch.setattr(backend, "task_dict", {"t": {"test": docs}})
    backend.videos.last = None
    monkeypatch.setattr(video, "read_video", spy)
    monkeypatch.setattr(backend.model, "generate", generate_waiting_for_b)
    visual = lambda doc: [doc["video"]]  # noqa: E731
    answers = backend.generate_until([_Request(f"Q{i}?", dict(gen), visual, i, "t", "test") for i in range(3)])
    assert answers == expected and len(calls) == 3
    assert [path for path, _ in reads] == [video_a, video_b]
    assert reads[1][1].startswith("videorope-video") and backend.videos.pending == {}


def test_unreadable_videos_are_named_before_anything_is_generated(backend, tmp_path, monkeypatch):
    """A missing file and one that is not a video, in the 2nd and 3rd requests: one error names both (and their
    documents) before the first request generates; lmms-eval would otherwise lose the run when it reached them."""
    from videorope_train.data.demo import write_video

    good = str(write_video(tmp_path / "good.mp4", frames=4, width=56, height=56, fps=2, seed=6))
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    missing = str(tmp_path / "missing.mp4")
    docs = [{"video": good}, {"video": missing}, {"video": str(broken)}]
    monkeypatch.setattr(backend, "task_dict", {"t": {"test": docs}})
    calls = []
    monkeypatch.setattr(backend.model, "generate", lambda **kwargs: calls.append(kwargs))
    visual = lambda doc: [doc["video"]]  # noqa: E731
    requests = [_Request(f"Q{i}?", {"max_new_tokens": 3}, visual, i, "t", "test") for i in range(3)]
    with pytest.raises(FileNotFoundError) as error:
        backend.generate_until(requests)
    message = str(error.value)
    assert "2 of 3 videos cannot be read, nothing was generated" in message
    assert f"{missing} (t doc 1): no such file" in message and f"{broken} (t doc 2): " in message
    assert calls == []
