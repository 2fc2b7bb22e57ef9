"""Evaluation's video path (eval/video.py): the authors' sampling policy worked by hand, one open per video, and
the errors it gives before any model work."""

import pytest

def test_frame_sampling_follows_the_authors_settings():
    from videorope_train.eval.video import frame_count, frame_size, video_budget

    assert video_budget("8k").total_pixels == (8192 - 512) * 28 * 28
    assert video_budget("64k").max_tokens == 64000 - 512
    assert frame_count(duration=10.0, available=250) == 20  # 2 fps
    assert frame_count(duration=1000.0, available=25000) == 768  # capped
    assert frame_count(duration=0.5, available=12) == 4  # at least 4
    assert frame_count(duration=3.0, available=90, frames=7) == 8  # even
    height, width = frame_size(480, 640, 144 * 784, 768 * 784)
    assert height % 28 == 0 and width % 28 == 0 and height * width <= 768 * 784
    assert abs(width / height - 640 / 480) < 0.1
    with pytest.raises(ValueError, match="leaves no room"):
        video_budget(400)


def test_the_frame_floor_outweighs_the_context_budget_on_long_videos():
    """qwen_vl_utils' rule, worked by hand. A 30-min video: 768 frames at 2 fps = 384 temporal patches. At 8k the
    frame's share is 2 * 7680 * 784 / 768 = 20 tokens' worth, below the floor, so the limit is
    int(1.05 * 144 * 784) = 118,540 px (the same at 16k and 32k):
    640x360: 364x644 rounded is too big; scaled by sqrt(230400 / 118540) = 1.3942 and floored to 28-multiples:
    252x448 = 9x16 = 144 tokens -> 55,296 video tokens. 640x480: scaled by sqrt(307200 / 118540) = 1.6098:
    480 / 1.6098 / 28 = 10.65 -> 280, 640 / 1.6098 / 28 = 14.20 -> 392: 10x14 = 140 tokens -> 53,760 (with the
    limit at the bare floor, 112,896 px, it would be 280x364 = 130 tokens).
    At 64k the share, 2 * 63488 * 784 / 768 = 129,621 px, is above 118,540: 640x360 scaled by sqrt(230400 / 129621)
    = 1.3332 -> 270.0 / 28 = 9.64 -> 252, 480.0 / 28 = 17.1 -> 476: 9x17 = 153 tokens -> 58,752."""
    from videorope_train.eval.video import frame_count, frame_pixel_limit, frame_size, video_budget

    frames = frame_count(duration=1800.0, available=54000)
    assert frames == 768
    for context in ("8k", "16k", "32k"):
        budget = video_budget(context)
        limit = frame_pixel_limit(budget, frames)
        assert limit == 118_540
        assert frame_size(360, 640, budget.min_frame_pixels, limit) == (252, 448)
        assert frame_size(480, 640, budget.min_frame_pixels, limit) == (280, 392)
    budget = video_budget("64k")
    limit = frame_pixel_limit(budget, frames)
    assert limit == pytest.approx(129_621.33, abs=0.01)
    assert frame_size(360, 640, budget.min_frame_pixels, limit) == (252, 476)
    assert frame_pixel_limit(video_budget("8k"), 8) == 768 * 784  # a short clip: the per-frame cap


def test_a_video_is_opened_once_for_probe_size_and_frames(tmp_path, monkeypatch):
    """Probe, frame size and decoding share one open container; the frames are what a separate probe + read give."""
    import av
    import torch

    from videorope_train.data.demo import write_video
    from videorope_train.eval import video
    from videorope_train.video import probe_video

    path = write_video(tmp_path / "clip.mp4", frames=6, width=84, height=56, fps=2, seed=1)
    budget = video.video_budget("8k")
    opens, real_open = [], av.open
    monkeypatch.setattr(av, "open", lambda *args, **kwargs: opens.append(args[0]) or real_open(*args, **kwargs))
    frames = video.read_video(str(path), budget).frames
    assert opens == [str(path)]
    monkeypatch.setattr(av, "open", real_open)
    info = probe_video(path)
    count = video.frame_count(info.duration, info.frames)
    size = video.frame_size(info.height, info.width, budget.min_frame_pixels, video.frame_pixel_limit(budget, count))
    separate = video.read_frames(path, video.sample_times(info, count)[0], size)
    # 3 s at 2 fps: 6 frames. Their share of 8k's budget caps a frame at 768 tokens' worth (602,112 px); 56x84 =
    # 4,704 px is below min_pixels = 144 * 784 = 112,896: scaled by sqrt(112896 / 4704) = sqrt(24) = 4.899 keeping
    # the aspect ratio, sides rounded up to 28-multiples: 56 * 4.899 / 28 = 9.80 -> 280, 84 * 4.899 / 28 = 14.70 -> 420
    assert (info.height, info.width, count, size) == (56, 84, 6, (280, 420))
    assert torch.equal(frames, torch.from_numpy(separate).permute(0, 3, 1, 2))


@pytest.mark.parametrize("context, message", [
    ("12k", r"context='12k' is neither one of the papers' contexts \(8k, 16k, 32k, 64k\) nor a number of tokens"),
    (400, "leaves no room for video"),
])
def test_an_unknown_context_is_named_with_the_allowed_values(context, message):
    from videorope_train.eval.video import video_budget

    with pytest.raises(ValueError, match=message):
        video_budget(context)


def test_numeric_contexts_are_token_counts():
    from videorope_train.eval.video import context_tokens

    assert context_tokens("16384") == context_tokens("16k") == 16384 and context_tokens(12000) == 12000
