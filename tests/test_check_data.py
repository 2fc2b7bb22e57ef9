"""check-data finds what would crash training, and the launcher runs it before any training starts."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # end-to-end launches: not in `make test-fast`

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture
def broken_dataset(demo_dataset_dir, tmp_path):
    """The demo dataset plus: a corrupt mp4, a missing video, an empty conversation."""
    root = tmp_path / "data"
    shutil.copytree(demo_dataset_dir, root)
    (root / "videorope_demo" / "corrupt.mp4").write_bytes(os.urandom(2048))
    samples = json.loads((root / "videorope_demo.json").read_text())
    good = len(samples)
    samples += [
        {"messages": [{"role": "user", "content": "<video>What?"}, {"role": "assistant", "content": "x"}],
         "videos": ["videorope_demo/corrupt.mp4"]},
        {"messages": [{"role": "user", "content": "<video>What?"}, {"role": "assistant", "content": "x"}],
         "videos": ["videorope_demo/not_there.mp4"]},
        {"messages": [{"role": "user", "content": "Hello?"}], "videos": []},
    ]
    (root / "videorope_demo.json").write_text(json.dumps(samples))
    return root, good


def run(command, **env):
    environment = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}", HF_HUB_OFFLINE="1", **env)
    return subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=600)


def test_check_data_reports_each_problem(hooked_dir, broken_dataset, tmp_path):
    root, good = broken_dataset
    out = tmp_path / "report"
    result = run([str(BIN / "videorope-train"), "check-data", "--recipe", "recipes/tiny_cpu_sft.yaml", "--out",
                  str(out), "--workers", "2", f"model_name_or_path={hooked_dir('videorope')}", f"dataset_dir={root}",
                  "cutoff_len=60"])
    assert result.returncode == 1, result.stdout + result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    by_index = {p["index"]: p["status"] for p in report["problems"]}
    assert by_index[good] == "corrupt" and by_index[good + 1] == "missing" and by_index[good + 2] == "empty"
    # demo clip 3 has 99 tokens (32 of them visual): cutoff_len 60 cuts into them -> the feature/token mismatch
    assert by_index[3] == "truncated" and "not_there.mp4" in str(report["problems"])
    assert report["samples"] == good + 3 and report["would_crash"]
    assert (out / "tokens.png").stat().st_size > 0
    assert "corrupt" in result.stdout and "training would crash" in result.stdout


@pytest.mark.parametrize("family, recipe", [("qwen2_vl", "recipes/tiny_cpu_sft.yaml"),
                                            ("qwen3_vl", "recipes/tiny_qwen3vl_cpu_sft.yaml")])
def test_clean_dataset_passes(hooked_dir, demo_dataset_dir, tmp_path, family, recipe):
    """In this process (workers=0; the CLI and its worker pool run in the test above): every demo sample is ok —
    Qwen3-VL's too, whose timestamps LLaMA-Factory writes from the decoded video's metadata."""
    from videorope_train.data.check import check_data

    model = hooked_dir("videorope", family=family)
    report = check_data(recipe, overrides=[f"model_name_or_path={model}", f"dataset_dir={demo_dataset_dir}"],
                        out=tmp_path / "r", workers=0)
    samples = json.loads((demo_dataset_dir / "videorope_demo.json").read_text())
    assert report["samples"] == len(samples) and report["counts"]["ok"] == len(samples)
    assert not report["would_crash"] and not report["problems"]


def test_launcher_checks_data_before_training(hooked_dir, broken_dataset, tmp_path):
    root, _ = broken_dataset
    out = tmp_path / "out"
    result = run(["bash", "scripts/train_local.sh", "recipes/tiny_cpu_sft.yaml", "1",
                  f"model_name_or_path={hooked_dir('videorope')}", f"dataset_dir={root}", f"output_dir={out}"],
                 DATA_CHECK_DIR=str(tmp_path / "check"))
    assert result.returncode != 0
    assert "training would crash" in result.stdout
    assert not out.exists()  # nothing started, nothing written
    assert json.loads((tmp_path / "check" / "report.json").read_text())["would_crash"]
