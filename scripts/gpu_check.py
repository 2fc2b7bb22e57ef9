#!/usr/bin/env python
"""Acceptance check for a CUDA node: run before the first cluster job (``scripts/gpu_check.sh`` runs this).

    scripts/gpu_check.sh [--out gpu_check] [--steps 30]

1. environment: GPUs, driver, torch / CUDA, flash-attn, transformers, LLaMA-Factory, DeepSpeed;
2. the CUDA-only tests: real flash-attn vs sdpa (left-padded and packed rows, every variant, both families), bf16
   generate == full forward with the fused rotary, the fused kernel compiled (tests/test_gpu.py,
   tests/test_fused_rotary.py);
3. the benchmark in bf16 (scripts/bench_rope.py): the fused rotary's time as a multiple of the bandwidth floor, and
   the VideoRoPE / M-RoPE train-step ratio with its 95% interval;
4. ~30 steps of a ~100M-parameter random Qwen2-VL hooked with VideoRoPE, fa2 + bf16 + ZeRO-3 over every visible GPU,
   through ``llamafactory-cli``; a second run is killed after its mid-way checkpoint and restarted through
   ``scripts/train_local.sh``, which resumes it; its losses after the restart must match the uninterrupted run's;
5. evaluation time per benchmark question (scripts/bench_eval.py): Qwen2-VL-7B's shape with random weights through
   the lmms-eval backend at the 8k and 64k presets (video read, processor, prefill, decode per token).

Writes ``OUT/gpu_check.json`` and ``OUT/gpu_check.md``; exits 1 if any part failed.  No network.  ``--smoke``
runs the same orchestration on a CPU with tiny sizes and the flash_attn stand-in (the test suite uses it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run(command, log: Path, env=None, timeout=None, cwd=REPO):
    """Run ``command`` with output to ``log``; returns (exit code, seconds)."""
    start = time.time()
    with open(log, "w") as handle:
        try:
            code = subprocess.run([str(c) for c in command], cwd=cwd, env=env, stdout=handle,
                                  stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            code = 124
    return code, round(time.time() - start, 1)


def tail(log: Path, lines=30) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.is_file() else ""


def environment() -> dict:
    import torch

    info = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda (torch)": torch.version.cuda,
            "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}
    for package in ("flash_attn", "transformers", "llamafactory", "deepspeed", "triton", "videorope-train"):
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info[package] = None
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=60)
        info["nvidia-smi"] = smi.stdout.strip().splitlines()
    except (OSError, subprocess.TimeoutExpired) as error:
        info["nvidia-smi"] = f"unavailable ({error})"
    return info


def losses(output_dir: Path) -> dict[int, float]:
    log = output_dir / "trainer_log.jsonl"
    out = {}
    for line in log.read_text().splitlines() if log.is_file() else []:
        entry = json.loads(line)
        if "loss" in entry:
            out[int(entry["current_steps"])] = float(entry["loss"])
    return out


def train_and_resume(out: Path, args, env: dict) -> dict:
    """Uninterrupted run vs. a run killed after checkpoint-(steps/2) and restarted by the local launcher."""
    work = out / "train"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cli = str(BIN / "videorope-train")
    base, model = work / "base", work / "model-videorope"
    size = [] if args.smoke else ["--hidden-size", "1024", "--layers", "12", "--heads", "8", "--kv-heads", "2",
                                  "--mrope-section", "16", "24", "24"]
    for command in ([cli, "make-tiny-model", base, *size],
                    [cli, "prepare-model", "--base", base, "--rope", "videorope", "--temporal-stride", "2",
                     "--out", model],
                    [cli, "make-demo-data", work / "data"]):
        code, _ = run(command, work / "setup.log", env)
        if code:
            return {"ok": False, "error": f"{command[1]} failed", "log": tail(work / "setup.log")}
    shutil.copy(REPO / "data" / "dataset_info.json", work / "data" / "dataset_info.json")
    half = args.steps // 2
    recipe_args = [f"model_name_or_path={model}", f"dataset_dir={work / 'data'}", "flash_attn=fa2",
                   "deepspeed=recipes/deepspeed/ds_z3_config.json", f"max_steps={args.steps}", f"save_steps={half}",
                   "per_device_train_batch_size=1", "gradient_accumulation_steps=1", "save_only_model=false",
                   "dataloader_num_workers=0", "report_to=none"]
    if not args.smoke:
        recipe_args.append("bf16=true")
    procs = str(args.processes)
    train_env = dict(env, FORCE_TORCHRUN="1", NPROC_PER_NODE=procs, MASTER_PORT=str(args.port))
    full, resumed = work / "uninterrupted", work / "resumed"

    code, seconds = run([BIN / "llamafactory-cli", "train", "recipes/tiny_cpu_sft.yaml", f"output_dir={full}",
                         *recipe_args], work / "uninterrupted.log", train_env, timeout=args.timeout)
    if code:
        return {"ok": False, "error": "uninterrupted run failed", "log": tail(work / "uninterrupted.log")}
    result = {"parameters": _parameters(model), "steps": args.steps, "processes": args.processes,
              "uninterrupted s": seconds}

    # the second run: killed once checkpoint-<half> is complete, then restarted by the launcher
    with open(work / "killed.log", "w") as handle:
        process = subprocess.Popen([str(BIN / "llamafactory-cli"), "train", "recipes/tiny_cpu_sft.yaml",
                                    f"output_dir={resumed}", *recipe_args], cwd=REPO, env=train_env, stdout=handle,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + args.timeout
        checkpoint = resumed / f"checkpoint-{half}"
        # complete: every rank's RNG state and rank 0's trainer state (written last) are there
        rng = ["rng_state.pth"] if args.processes == 1 else [f"rng_state_{r}.pth" for r in range(args.processes)]
        written = [checkpoint / "trainer_state.json"] + [checkpoint / name for name in rng]
        marker = written[0]
        while not all(path.is_file() for path in written) and process.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        kill_tree(process.pid)  # as a node failure would: torchrun's workers run in sessions of their own
        process.wait()
    if not marker.is_file():
        return {**result, "ok": False, "error": f"no checkpoint-{half} before the kill", "log": tail(work / "killed.log")}
    code, seconds = run(["bash", "scripts/train_local.sh", "recipes/tiny_cpu_sft.yaml", procs, f"output_dir={resumed}",
                         *recipe_args], work / "resumed.log", dict(train_env, SKIP_DATA_CHECK="1"),
                        timeout=args.timeout)
    if code:
        return {**result, "ok": False, "error": "restart failed", "log": tail(work / "resumed.log")}
    want, got = losses(full), losses(resumed)
    after = [step for step in sorted(want) if step > half]
    if not after or any(step not in got for step in after):
        return {**result, "ok": False, "error": f"the restarted run logged steps {sorted(got)}, expected {after}"}
    worst = max(abs(got[step] - want[step]) / max(abs(want[step]), 1e-6) for step in after)
    resumed_from = f"checkpoint-{half}" in (work / "resumed.log").read_text(errors="replace")
    tolerance = 1e-4 if args.smoke else 2e-2  # bf16 kernels on GPU are not bit-deterministic
    return {**result, "resumed s": seconds, "resumed from checkpoint": resumed_from,
            "max relative loss difference after restart": worst,
            "final loss": want[max(want)], "ok": resumed_from and worst <= tolerance}


def kill_tree(pid: int) -> None:
    import psutil

    parent = psutil.Process(pid)
    for process in [parent, *parent.children(recursive=True)]:
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass


def _parameters(model: Path) -> int:
    from math import prod

    from safetensors import safe_open

    total = 0
    for file in model.glob("*.safetensors"):
        with safe_open(str(file), "pt") as handle:
            total += sum(prod(handle.get_slice(name).get_shape()) for name in handle.keys())
    return total


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = ["# gpu_check", "", "| part | result |", "|---|---|"]
    for name, part in report["parts"].items():
        status = "ok" if part.get("ok") else ("skipped" if part.get("skipped") else "FAILED")
        lines.append(f"| {name} | {status}{': ' + part['error'] if part.get('error') else ''} |")
    lines += ["", "| environment | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in env.items()]
    bench = report["parts"].get("benchmark", {})
    if bench.get("ok"):
        lines += ["", "| benchmark (bf16) | value |", "|---|---|"]
        lines += [f"| {key} | {value} |" for key, value in bench["figures"].items()]
    evaluation = report["parts"].get("evaluation time", {})
    if evaluation.get("ok"):
        lines += ["", "| evaluation time (scripts/bench_eval.py, median of repeats) | value |", "|---|---|"]
        lines += [f"| {key} | {value} |" for key, value in evaluation["figures"].items()]
    train = report["parts"].get("train + resume", {})
    if "steps" in train:
        lines += ["", "| train + resume | value |", "|---|---|"]
        lines += [f"| {key} | {value} |" for key, value in train.items() if key not in ("log", "ok")]
    return "\n".join(lines) + "\n"


def bench_figures(path: Path) -> dict:
    report = json.loads(path.read_text())
    figures = {}
    for entry in report["rotary"]:
        for name in ("this project, fused (triton)", "this project", "stock M-RoPE"):
            if name in entry["rows"]:
                row = entry["rows"][name]
                figures[f"{name}, {entry['tokens']} tokens"] = (f"{row['ms_per_layer']:.3f} ms/layer, "
                                                                f"{row['x floor']:.2f}x floor")
    step = report.get("step")
    if step:
        low, high = step["videorope/mrope (hook) ci95"]
        figures["videorope/mrope train step"] = f"{step['videorope/mrope (hook)']:.3f} (95% CI {low:.3f}-{high:.3f})"
        figures["step ms"] = ", ".join(f"{k} {v:.1f}" for k, v in step["ms"].items())
    return figures


def evaluation_time(out: Path, args, env: dict) -> dict:
    """scripts/bench_eval.py: seconds per benchmark question through the lmms-eval backend, Qwen2-VL-7B's shape
    (random weights, VideoRoPE, bf16, fa2) at the 8k and 64k presets on a 2-min and a 30-min video."""
    if args.smoke:
        shape = ["--random", "tiny", "--contexts", "1024", "--durations", "20", "--video-size", "128", "192",
                 "--repeats", "1", "--decode-tokens", "2", "--attn", "flash_attention_2", "--dtype", "float32",
                 "--device", "cpu"]
    else:
        shape = ["--random", "qwen2-vl-7b", "--contexts", "8k", "64k", "--durations", "120", "1800", "--repeats", "2",
                 "--video-fps", "2", "--attn", "flash_attention_2"]
    code, seconds = run([sys.executable, "scripts/bench_eval.py", *shape, "--out", out / "bench_eval.json"],
                        out / "bench_eval.log", env, timeout=args.eval_timeout)
    if code:
        return {"ok": False, "seconds": seconds, "error": tail(out / "bench_eval.log", 5)}
    report = json.loads((out / "bench_eval.json").read_text())
    figures = {}
    for row in report["rows"]:
        hours = ", ".join(f"{name} {value:.1f} h" for name, value in row["hours"].items())
        figures[f"{row['context']}, {row['video s']:g} s video"] = (
            f"{row['input tokens']} tokens, read {row['read s']['median']:.2f} s ({row['source frames']} "
            f"source frames), processor {row['processor s']['median']:.2f} s, prefill "
            f"{row['prefill s']['median']:.2f} s, decode {row['decode s/token']['median'] * 1e3:.1f} ms/token, "
            f"{row['question s']:.2f} s/question; {hours}")
    return {"ok": True, "seconds": seconds, "figures": figures}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="gpu_check")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--processes", type=int, default=None, help="default: every visible GPU")
    parser.add_argument("--port", type=int, default=29533)
    parser.add_argument("--timeout", type=int, default=400, help="seconds per training run")
    parser.add_argument("--eval-timeout", type=int, default=480, help="seconds for the evaluation-time part")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny sizes, flash_attn stand-in (tests only)")
    args = parser.parse_args(argv)

    import torch

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}", HF_HUB_OFFLINE="1", WANDB_MODE="offline")
    if args.smoke:
        site = str(REPO / "tests" / "site")
        env.update(PYTHONPATH=os.pathsep.join(filter(None, [site, env.get("PYTHONPATH")])), FLASH_ATTN_CPU="1",
                   FLASH_ATTN_CPU_ALLOW_FP32="1")
        sys.path.insert(0, site)  # so the environment report sees the stand-in as the children do
    elif not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible (nvidia-smi, CUDA_VISIBLE_DEVICES)", file=sys.stderr)
        return 1
    args.processes = args.processes or (2 if args.smoke else torch.cuda.device_count())
    report = {"environment": environment(), "parts": {}}
    print(json.dumps(report["environment"], indent=2))
    parts = report["parts"]

    if args.smoke:
        parts["CUDA tests"] = {"skipped": True, "error": "smoke run on CPU"}
    else:
        code, seconds = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_gpu.py",
                             "tests/test_fused_rotary.py"], out / "tests.log", env, timeout=300)
        summary = tail(out / "tests.log", 1)
        parts["CUDA tests"] = {"ok": code == 0 and "skipped" not in summary.split(" in ")[0].replace(
            "deselected", ""), "seconds": seconds, "summary": summary}
        if not parts["CUDA tests"]["ok"]:
            parts["CUDA tests"]["error"] = summary or f"exit {code}"
    print("CUDA tests:", parts["CUDA tests"])

    bench = ["--tokens", "1024", "--repeats", "2", "--index-batch", "2", "--step-repeats", "2", "--step-hidden",
             "256", "--step-layers", "2"] if args.smoke else ["--tokens", "8192", "32768"]
    code, seconds = run([sys.executable, "scripts/bench_rope.py", *bench, "--dtype", "bfloat16", "--out",
                         out / "bench_rope.json"], out / "bench.log", env, timeout=300)
    parts["benchmark"] = {"ok": code == 0, "seconds": seconds}
    if code == 0:
        parts["benchmark"]["figures"] = bench_figures(out / "bench_rope.json")
        if not args.smoke and not any("fused" in key for key in parts["benchmark"]["figures"]):
            parts["benchmark"].update(ok=False, error="the fused rotary kernel did not run on this GPU")
    else:
        parts["benchmark"]["error"] = tail(out / "bench.log", 5)
    print("benchmark:", parts["benchmark"])

    parts["train + resume"] = train_and_resume(out, args, env)
    print("train + resume:", {k: v for k, v in parts["train + resume"].items() if k != "log"})

    parts["evaluation time"] = evaluation_time(out, args, env)
    print("evaluation time:", parts["evaluation time"])

    report["ok"] = all(part.get("ok") or part.get("skipped") for part in parts.values())
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "gpu_check.md").write_text(markdown(report))
    print(markdown(report))
    print(f"written {out / 'gpu_check.json'} and {out / 'gpu_check.md'}: {'PASS' if report['ok'] else 'FAIL'}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
