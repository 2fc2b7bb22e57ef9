"""`prepare-llava-video` on a small fake LLaVA-Video-178K tree in the published layout (real PyAV mp4s).

The tree mirrors huggingface.co/datasets/lmms-lab/LLaVA-Video-178K after extracting the video tarballs in
place: `<duration>_<source>/` folders with `*_cap_processed.json`, `*_oe_*_qa_processed.json`,
`*_mc_*_qa_processed.json` and the videos under the record's relative `video` path.
"""

import json
from pathlib import Path

import pytest

from videorope_train.data import llava_video
from videorope_train.data.demo import write_video
from videorope_train.data.json_records import iter_json_records
from videorope_train.data.llava_video import convert_conversation, discover_annotation_files, prepare_llava_video

ACADEMIC = "0_30_s_academic_v0_1"
YT_1_2 = "1_2_m_youtube_v0_1"
YT_2_3 = "2_3_m_youtube_v0_1"
MISSING = f"{ACADEMIC}/academic_source/Charades/A4.mp4"


def _videos(subset):
    if subset == ACADEMIC:
        return [f"academic_source/Charades/A{i}.mp4" for i in range(5)]  # A4 is never written (missing)
    prefix = "Y" if subset == YT_1_2 else "Z"
    return [f"liwei_youtube_videos/videos/youtube_video_2024/ytb_{prefix}{i}.mp4" for i in range(3)]


def _record(subset, kind, video, index, turns=1):
    conversations = []
    for turn in range(turns):
        question = "Describe the video in detail." if kind == "cap" else f"Question {turn} about {video}?"
        if turn == 0:
            question = f"<image>\n{question}"
        conversations += [{"from": "human", "value": question},
                          {"from": "gpt", "value": f"Answer {turn} ({kind}) for {video} ünïcode {{ ] }}"}]
    return {"id": f"{subset}-{kind}-{index}", "conversations": conversations, "data_source": subset, "video": video}


def make_tree(root: Path) -> dict:
    """Write the fake tree; return the expected samples / QA per (subset, video)."""
    expected = {}
    files = {
        ACADEMIC: {"0_30_s_academic_v0_1_cap_processed.json": "cap",
                   "0_30_s_academic_oe_v0_1_qa_processed.json": "oe",
                   "0_30_s_academic_mc_v0_1_qa_processed.json": "mc"},
        YT_1_2: {"1_2_m_youtube_v0_1_cap_processed.json": "cap", "1_2_m_youtube_oe_v0_1_qa_processed.json": "oe"},
        YT_2_3: {"2_3_m_youtube_v0_1_cap_processed.json": "cap", "2_3_m_youtube_mc_v0_1_qa_processed.json": "mc"},
    }
    for s, (subset, names) in enumerate(files.items()):
        videos = _videos(subset)
        for v, video in enumerate(videos):
            if f"{subset}/{video}" != MISSING:
                # ytb_Z2 lasts 3 s (12 frames at 4 fps), everything else 1 s
                frames = 12 if video.endswith("ytb_Z2.mp4") else 4
                write_video(root / subset / video, frames, 32, 32, fps=4, seed=10 * s + v)
        for name, kind in names.items():
            records = []
            for v, video in enumerate(videos):
                per_video = [(1,)] if kind != "oe" else [(1,), (2,)]  # oe: one single-turn + one 2-turn record
                for n, (turns,) in enumerate(per_video):
                    records.append(_record(subset, kind, video, f"{v}-{n}", turns))
                    key = f"{subset}/{video}"
                    samples, qa = expected.get(key, (0, 0))
                    expected[key] = (samples + 1, qa + turns)
            (root / subset / name).write_text(json.dumps(records, indent=2, ensure_ascii=False))
        (root / subset / f"{subset}_videos_1.tar.gz").write_bytes(b"")  # the published archives, already extracted
    (root / "llava_hound").mkdir()
    (root / "llava_hound" / "sharegptvideo_qa_255k_processed.json").write_text("[]")  # no duration prefix: ignored
    return expected


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("LLaVA-Video-178K")
    return root, make_tree(root)


def run(src, out, **kwargs):
    kwargs.setdefault("progress", False)
    kwargs.setdefault("caps", {"0_2m": "all", "2_3m": "all"})
    return prepare_llava_video(src, out, **kwargs)


def shards(out, split):
    return sorted((Path(out) / "llava_video_178k" / split).glob("*.json"))


def records(out, split):
    return [record for path in shards(out, split) for record in json.loads(path.read_text())]


def snapshot(out):
    """Every output file's bytes (shards, dataset_info, summary, selection, report; the out path itself replaced)."""
    out = Path(out)
    files = {path.relative_to(out).as_posix(): path.read_bytes().replace(str(out).encode(), b"OUT")
             for path in out.rglob("*") if path.is_file()}
    files.pop("llava_video_178k/prepare_state.json")
    return files


def key_of(path: str, src: Path) -> str:
    return Path(path).relative_to(src).as_posix()


# ---------------------------------------------------------------------------------------------------- tests
def test_layout_discovery_and_errors(tree, tmp_path):
    src, _ = tree
    files = discover_annotation_files(src)
    assert [subset for subset, _ in files] == [ACADEMIC] * 3 + [YT_1_2] * 2 + [YT_2_3] * 2
    assert all(path.name.endswith("_processed.json") for _, path in files)
    assert {s for s, _ in discover_annotation_files(src, ["youtube_v0_1"])} == {YT_1_2, YT_2_3}

    with pytest.raises(ValueError, match=r"0_30_s, 30_60_s, 1_2_m, 2_3_m.*0_30_s_academic_v0_1"):
        discover_annotation_files(tmp_path)
    with pytest.raises(ValueError, match="pass its parent"):
        discover_annotation_files(src / ACADEMIC)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        discover_annotation_files(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="--sources nope"):
        discover_annotation_files(src, ["nope"])
    (tmp_path / "2_3_m_youtube_v0_1").mkdir()
    with pytest.raises(ValueError, match="no annotation files.*_cap_processed.json"):
        discover_annotation_files(tmp_path)


def test_streaming_parser_matches_json(tmp_path, monkeypatch):
    from videorope_train.data import json_records

    monkeypatch.setattr(json_records, "BUFFER_BYTES", 7)  # records span many reads
    data = [{"id": i, "text": "ä{[\"]}" * i, "nested": {"a": [1, {"b": "]"}], "x": 0.1 * i}} for i in range(50)]
    path = tmp_path / "a.json"
    path.write_text("\ufeff" + json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
    seen = list(iter_json_records(path))
    assert [record for record, _ in seen] == data  # floats as Python's json reads them (0.30000000000000004)
    assert seen[-1][1] <= path.stat().st_size and [b for _, b in seen] == sorted(b for _, b in seen)
    lines = tmp_path / "a.jsonl"
    lines.write_text("\n".join(json.dumps(item) for item in data) + "\n")
    assert [record for record, _ in iter_json_records(lines)] == data
    one = tmp_path / "one.json"
    one.write_text('{"a": 1}')
    assert [r for r, _ in iter_json_records(one)] == [{"a": 1}]
    one.write_text("  \n")
    assert list(iter_json_records(one)) == []


@pytest.mark.parametrize("text, message", [
    (json.dumps([{"a": i} for i in range(9)])[:-12], "truncated.json: invalid JSON after record 7"),
    ('[{"a": 1} {"a": 2}]', "after record 1"),  # a missing comma
    ('[{"a": 1},, {"a": 2}]', "after record 1"),  # an extra one
    ('[{"a": 1}] [', "after record 1"),  # data after the array
    ("[1, 2]", "record 0 is a int; expected JSON objects"),
    ("nope", "expected a JSON array of records or JSON lines"),
])
def test_streaming_parser_rejects_malformed_json(tmp_path, text, message):
    path = tmp_path / "truncated.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        list(iter_json_records(path))


def test_convert_conversation_places_one_video():
    def convert(*values):
        roles = ["human", "gpt"]
        return convert_conversation([{"from": roles[i % 2], "value": v} for i, v in enumerate(values)])

    assert convert("<image>\nWhat?", "This.") == [{"role": "user", "content": "<video>\nWhat?"},
                                                   {"role": "assistant", "content": "This."}]
    assert convert("What?\n<image>", "A")[0]["content"] == "What?\n<video>"
    assert convert("What?", "A")[0]["content"] == "<video>\nWhat?"
    multi = convert("<image>\nQ1 <image>", "A1", "<image>\nQ2", "A2", "dangling question")
    assert [m["role"] for m in multi] == ["user", "assistant", "user", "assistant"]
    assert "".join(m["content"] for m in multi).count("<video>") == 1
    assert "<image>" not in json.dumps(multi) and multi[2]["content"] == "Q2"
    assert convert_conversation([{"from": "gpt", "value": "x"}, {"from": "human", "value": "y"}]) is None
    assert convert_conversation([]) is None and convert("only a question") is None


def test_splits_conversion_summary_and_missing(tree, tmp_path):
    src, expected = tree
    out = tmp_path / "out"
    summary = run(src, out, shard_size=4)

    present = {key: value for key, value in expected.items() if key != MISSING}
    for split, subsets in (("0_2m", (ACADEMIC, YT_1_2)), ("2_3m", (YT_2_3,))):
        rows = records(out, split)
        keys = [key_of(row["videos"][0], src) for row in rows]
        assert {key.split("/")[0] for key in keys} == set(subsets)  # split by subset folder name
        wanted = {key: value for key, value in present.items() if key.split("/")[0] in subsets}
        assert sorted(set(keys)) == sorted(wanted)
        for key, (samples, qa) in wanted.items():
            mine = [row for row, k in zip(rows, keys) if k == key]
            assert len(mine) == samples and sum(len(row["messages"]) // 2 for row in mine) == qa
        for row in rows:
            assert set(row) == {"messages", "videos"} and Path(row["videos"][0]).is_absolute()
            assert Path(row["videos"][0]).is_file()
            text = json.dumps(row["messages"], ensure_ascii=False)
            assert text.count("<video>") == 1 and "<image>" not in text
            assert row["messages"][0]["role"] == "user" and row["messages"][0]["content"].startswith("<video>\n")
            assert [m["role"] for m in row["messages"]] == ["user", "assistant"] * (len(row["messages"]) // 2)
        assert any(len(row["messages"]) == 4 for row in rows) == (split == "0_2m")  # multi-turn (oe) kept
        assert all(len(json.loads(p.read_text())) <= 4 for p in shards(out, split))

        row = summary["splits"][split]
        assert row["selected_videos"] == row["eligible_videos"] == len(wanted)
        assert row["samples"] == sum(s for s, _ in wanted.values()) == len(rows)
        assert row["qa"] == sum(q for _, q in wanted.values())
        assert row["shards"] == len(shards(out, split))

    assert summary["missing_videos"] == 1 and summary["missing_samples"] == expected[MISSING][0]
    assert (out / "llava_video_178k" / "missing_videos.txt").read_text() == f"{src / MISSING}\n"
    assert summary["too_long_videos"] == summary["malformed_samples"] == summary["unreadable_videos"] == 0
    assert json.loads((out / "llava_video_178k" / "summary.json").read_text()) == summary
    # nothing but shards in the folders LLaMA-Factory lists
    assert {p.suffix for split in ("0_2m", "2_3m") for p in (out / "llava_video_178k" / split).iterdir()} == {".json"}
    assert "0_30_s_academic_v0_1_cap_processed-00000.json" in [p.name for p in shards(out, "0_2m")]


def test_duration_limit_without_probe_drops_whole_subsets(tree, tmp_path):
    src, _ = tree
    out = tmp_path / "out"
    run(src, out)
    assert set(json.loads((out / "dataset_info.json").read_text())) == {"llava_video_178k_0_2m", "llava_video_178k_2_3m"}
    summary = run(src, out, max_duration_s=120, restart=True)
    assert summary["splits"]["2_3m"]["samples"] == 0 and summary["too_long_videos"] == 3
    assert not shards(out, "2_3m")
    info = json.loads((out / "dataset_info.json").read_text())
    assert set(info) == {"llava_video_178k_0_2m"}  # no entry for an empty split (the stale one is dropped)


def test_probe_duration_uses_real_lengths(tree, tmp_path):
    src, _ = tree
    summary = run(src, tmp_path / "out", probe=True, max_duration_s=2.5)
    assert summary["too_long_videos"] == 1  # ytb_Z2 lasts 3 s
    keys = {key_of(row["videos"][0], src) for row in records(tmp_path / "out", "0_2m")}
    assert f"{YT_2_3}/liwei_youtube_videos/videos/youtube_video_2024/ytb_Z1.mp4" in keys  # 1 s: under 2 min
    assert not any(key.endswith("ytb_Z2.mp4") for key in keys)
    assert summary["splits"]["2_3m"]["samples"] == 0 and summary["splits"]["0_2m"]["selected_videos"] == 9


def test_sampling_caps_by_video_and_seed(tree, tmp_path):
    src, expected = tree

    def sampled(seed, name):
        out = tmp_path / name
        summary = run(src, out, caps={"0_2m": 3, "2_3m": 1}, seed=seed)
        return out, summary, {split: sorted({key_of(r["videos"][0], src) for r in records(out, split)})
                              for split in ("0_2m", "2_3m")}

    out, summary, chosen = sampled(7, "a")
    assert len(chosen["0_2m"]) == 3 and len(chosen["2_3m"]) == 1
    assert summary["splits"]["0_2m"]["eligible_videos"] == 7 and summary["splits"]["0_2m"]["selected_videos"] == 3
    for split in ("0_2m", "2_3m"):  # every record of a sampled video is kept
        assert summary["splits"][split]["samples"] == sum(expected[key][0] for key in chosen[split])
        assert summary["splits"][split]["qa"] == sum(expected[key][1] for key in chosen[split])
    again, _, chosen_again = sampled(7, "b")
    assert chosen_again == chosen
    assert {k: v for k, v in snapshot(out).items() if "/0_2m/" in k or "/2_3m/" in k} == \
        {k: v for k, v in snapshot(again).items() if "/0_2m/" in k or "/2_3m/" in k}
    assert any(sampled(seed, f"s{seed}")[2] != chosen for seed in range(8, 12))


def test_resume_after_interruption_gives_identical_output(tree, tmp_path, monkeypatch):
    src, _ = tree
    reference = tmp_path / "reference"
    run(src, reference, shard_size=3)

    out = tmp_path / "out"
    real_write, calls = llava_video._write_shard, []

    def interrupt_on_fourth(path, rows, scratch):
        calls.append(path)
        if len(calls) == 4:  # inside the second annotation file (the first wrote 2 shards, 4 records)
            raise KeyboardInterrupt
        real_write(path, rows, scratch)

    monkeypatch.setattr(llava_video, "_write_shard", interrupt_on_fourth)
    with pytest.raises(KeyboardInterrupt):
        run(src, out, shard_size=3)
    state = json.loads((out / "llava_video_178k" / "prepare_state.json").read_text())
    assert list(state["files"]) == [f"{ACADEMIC}/0_30_s_academic_mc_v0_1_qa_processed.json"]
    first_shard = out / "llava_video_178k" / "0_2m" / "0_30_s_academic_mc_v0_1_qa_processed-00000.json"
    stamp = first_shard.stat().st_mtime_ns

    monkeypatch.setattr(llava_video, "_write_shard", real_write)
    summary = run(src, out, shard_size=3)
    assert snapshot(out) == snapshot(reference)
    assert first_shard.stat().st_mtime_ns == stamp  # the finished file was not redone
    # a complete run re-run: nothing rewritten, same summary
    stamps = {p: p.stat().st_mtime_ns for p in (out / "llava_video_178k").rglob("*-0000*.json")}
    assert run(src, out, shard_size=3) == summary
    assert stamps == {p: p.stat().st_mtime_ns for p in stamps}
    # other settings are refused, unless --restart
    with pytest.raises(ValueError, match="--restart.*|shard_size"):
        run(src, out, shard_size=5)
    run(src, out, shard_size=5, restart=True)
    assert all(len(json.loads(p.read_text())) <= 5 for p in shards(out, "0_2m"))
    assert not (out / "llava_video_178k" / "0_2m" / "0_30_s_academic_oe_v0_1_qa_processed-00002.json").exists()


def test_dataset_info_entries_load_in_llamafactory(tree, tmp_path):
    from llamafactory.data.loader import _load_single_dataset
    from llamafactory.data.parser import get_dataset_list
    from llamafactory.hparams import DataArguments, ModelArguments
    from transformers import Seq2SeqTrainingArguments

    src, _ = tree
    repo_info = Path(__file__).resolve().parents[1] / "data" / "dataset_info.json"
    merged = tmp_path / "other" / "dataset_info.json"
    merged.parent.mkdir()
    merged.write_text(repo_info.read_text())
    out = tmp_path / "data"
    summary = run(src, out, dataset_info=merged, media_dir=src)

    info = json.loads((out / "dataset_info.json").read_text())
    assert info["llava_video_178k_0_2m"]["file_name"] == "llava_video_178k/0_2m"
    assert info["llava_video_178k_2_3m"]["file_name"] == "llava_video_178k/2_3m"
    repo_entry = json.loads(repo_info.read_text())["llava_video_178k_0_2m"]
    assert {k: v for k, v in info["llava_video_178k_0_2m"].items() if k != "file_name"} == \
        {k: v for k, v in repo_entry.items() if k != "file_name"}
    other = json.loads(merged.read_text())
    assert "videorope_demo" in other  # merged, not replaced; shards outside its folder -> absolute file_name
    assert other["llava_video_178k_2_3m"]["file_name"] == str(out / "llava_video_178k" / "2_3m")

    rows = records(out, "0_2m")
    assert all(not Path(row["videos"][0]).is_absolute() and (src / row["videos"][0]).is_file() for row in rows)

    names = ["llava_video_178k_0_2m", "llava_video_178k_2_3m"]
    attrs = get_dataset_list(names, str(out))
    assert [attr.dataset_name for attr in attrs] == ["llava_video_178k/0_2m", "llava_video_178k/2_3m"]
    assert all(attr.load_from == "file" and attr.formatting == "sharegpt" for attr in attrs)
    model_args = ModelArguments(model_name_or_path="unused", cache_dir=str(tmp_path / "hf-cache"))
    data_args = DataArguments(dataset_dir=str(out), media_dir=str(src))
    training_args = Seq2SeqTrainingArguments(output_dir=str(tmp_path / "run"), report_to=[])
    for attr, split in zip(attrs, ("0_2m", "2_3m")):
        dataset = _load_single_dataset(attr, model_args, data_args, training_args)
        assert len(dataset) == summary["splits"][split]["samples"]
        for example in dataset:
            assert example["_prompt"][0]["content"].startswith("<video>\n")
            assert len(example["_videos"]) == 1 and Path(example["_videos"][0]).is_file()
            assert example["_response"][0]["role"] == "assistant"


def test_cli(tree, tmp_path, capsys):
    from videorope_train.cli import main

    src, _ = tree
    code = main(["prepare-llava-video", "--src", str(src), "--out", str(tmp_path / "out"), "--videos-0-2m", "4",
                 "--videos-2-3m", "all", "--seed", "3", "--sources", "academic_v0_1,youtube_v0_1",
                 "--shard-size", "5", "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0 and "llava_video_178k_0_2m: 4 videos (of 7 eligible, cap 4)" in printed
    assert "llava_video_178k_2_3m: 3 videos (of 3 eligible, cap all)" in printed
    assert "1 missing videos" in printed
    assert main(["prepare-llava-video", "--src", str(tmp_path), "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    assert "expected SRC/<duration>_<source>/" in capsys.readouterr().err
