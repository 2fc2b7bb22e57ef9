"""scripts/device_check.sh's orchestration on a CPU (--smoke: tiny sizes, the flash_attn package's exact path):
every part, the deadline, the reports written after each part, the pass rule.  On a GPU the same script runs the real
kernels at ~100M parameters (README: "The GPU check")."""

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(REPO / "scripts"))
import device_check  # noqa: E402


def smoke(out, *args, timeout=1500):
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}")
    return subprocess.run(["bash", "scripts/device_check.sh", "--smoke", "--out", str(out), "--work",
                           str(out.parent / "work"), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_device_check_smoke_on_cpu(tmp_path):
    out = tmp_path / "check"
    result = smoke(out, "--deadline", "1400")
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-3000:]
    report = json.loads((out / "device_check.json").read_text())
    parts = report["parts"]
    assert report["passed"] is True and report["mode"] == "smoke"
    assert [name for name, *_ in device_check.PARTS] == list(parts)
    assert all(part["status"] == "passed" for part in parts.values()), {k: v["status"] for k, v in parts.items()}
    env = parts["environment"]
    assert env["flash_attn"] == "2.8.3" and "tools/torch_flash_attn" in env["imports"]["flash_attn"]
    copy, matmul = env["figures"]["copy GB/s"], env["figures"]["bf16 matmul TFLOP/s"]
    assert copy["repeats"] == matmul["repeats"] == 3 and copy["min"] > 0 and matmul["min"] > 0  # measured, not blank
    # the hooked-model part ran test_gpu.py's cases (on CPU here) and the flash_attn package's tests, none skipped
    assert parts["hooked model"]["tests"]["passed"] >= 29 and parts["hooked model"]["tests"]["skipped"] == 0
    train = parts["train + resume"]
    assert train["resumed from checkpoint"] and train["side by side"] and train["steps"] == 4
    assert train["max relative loss difference after restart"] <= 1e-4
    for run in ("uninterrupted", "resumed"):  # attention went through the flash_attn package every time
        assert train["flash_attn calls"][run]["flash_attn_varlen_func"] + train["flash_attn calls"][run][
            "flash_attn_func"] > 0 and train["flash_attn calls"][run]["exact"] > 0
    assert "videorope/mrope train step" in parts["step ratio"]["figures"]
    assert any(key.startswith("this project, ") for key in parts["fused rotary"]["figures"])
    assert len(parts["LoRA + ZeRO-2"]["losses"]) == 4
    # the result files a device call brings back: few, one folder
    assert sorted(p.name for p in out.iterdir()) == ["bench_eval.json", "bench_rope.json", "bench_step.json",
                                                     "device_check.json", "device_check.md"]
    table = (out / "device_check.md").read_text()
    assert table.startswith("# device_check: PASSED (smoke") and "| train + resume | passed |" in table


@pytest.mark.slow
def test_a_short_deadline_skips_parts_with_the_reason_and_fails(tmp_path):
    """30 s: the environment part runs (it needs 20 s), every later part is skipped with why, the check fails and
    the report says so — written although nothing after the first part ran."""
    out = tmp_path / "short"
    result = smoke(out, "--deadline", "30", timeout=300)
    report = json.loads((out / "device_check.json").read_text())
    assert result.returncode == 1 and report["passed"] is False
    assert report["parts"]["environment"]["status"] == "passed"
    skipped = {name: part for name, part in report["parts"].items() if part["status"] == "skipped"}
    assert "train + resume" in skipped and "needs 120 s" in skipped["train + resume"]["reason"]


def junit(path, cases):
    suite = ElementTree.Element("testsuite")
    for name, outcome, message in cases:
        case = ElementTree.SubElement(suite, "testcase", classname="tests.test_x", name=name)
        if outcome != "passed":
            ElementTree.SubElement(case, outcome, message=message)
    ElementTree.ElementTree(suite).write(path)


@pytest.mark.parametrize("cases, allowed, status", [
    ([("a", "passed", ""), ("b", "skipped", "needs two CUDA devices")], ["needs two CUDA devices"], "passed"),
    ([("a", "passed", ""), ("b", "skipped", "needs a CUDA device and flash-attn")], ["needs two CUDA devices"],
     "failed"),
    ([("a", "passed", ""), ("b", "failure", "AssertionError: logits differ")], [], "failed"),
    ([("a", "skipped", "needs two CUDA devices")], ["needs two CUDA devices"], "failed"),  # nothing ran at all
])
def test_pytest_part_counts_only_allowed_skips(tmp_path, monkeypatch, cases, allowed, status):
    """The pass rule of a pytest part, on junit reports written by hand (the exit code says 0 in every case)."""
    class Args:
        out, work, deadline, smoke, mode = str(tmp_path / "o"), str(tmp_path / "w"), 60, True, "smoke"

    check = device_check.Check(Args)

    def fake_run(command, log, env, timeout, cwd=None):
        junit(next(arg for arg in command if str(arg).startswith("--junitxml=")).split("=", 1)[1], cases)
        return 0, 0.1

    monkeypatch.setattr(device_check, "run", fake_run)
    assert device_check.pytest_part(check, "x", 10, [], allowed)["status"] == status
