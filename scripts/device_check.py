#!/usr/bin/env python
"""The GPU check, in parts with a deadline: ``scripts/device_check.sh`` (a bare, offline CUDA machine, wheels
carried) and ``scripts/gpu_check.sh`` (a cluster node with the pinned stack) both run this.

    python scripts/device_check.py [--out DIR] [--deadline SECONDS] [--smoke] [--cluster] [--steps N]

Parts, in order; each has a cap, is skipped with the reason when too little time is left, and its result is written
to ``OUT/device_check.json`` / ``OUT/device_check.md`` as soon as it finishes (a killed check still leaves them):
1. environment: versions, GPU, the imports the later parts need, and the floors the other figures are read against:
   device copy bandwidth and the bf16 matmul ceiling (median and min-max over repeats);
2. fused rotary: the Triton kernel compiled on this GPU against the eager formula (fwd + bwd, bf16/fp16/fp32, the 7B
   head shapes, decode; tests/test_fused_rotary.py) and its time as a multiple of the q/k copy floor at 8k and 32k
   tokens (scripts/bench_rope.py);
3. hooked model: flash-attention 2 == sdpa on a left-padded mixed batch and a packed row, every variant, both
   families; generate with KV cache == full forward with the fused rotary; bf16 loss and gradients against fp32
   (tests/test_gpu.py), and the flash_attn package against exact attention (tests/test_torch_flash_attn.py);
4. step ratio: the VideoRoPE / M-RoPE train-step time ratio in bf16 with its 95% interval (bench_rope.py);
5. train + resume: ``llamafactory-cli train`` of a ~100M random Qwen2-VL hooked with VideoRoPE, fa2 + bf16 +
   ZeRO-3; a second run killed after its mid-way checkpoint and restarted through ``scripts/train_local.sh``, side
   by side with the uninterrupted one; losses after the restart against the uninterrupted run's; the flash_attn
   package's call counts prove which attention kernel ran;
6. LoRA + ZeRO-2 (if time is left): a few steps, finite decreasing-capable losses, an adapter written;
7. evaluation time (if time is left and lmms-eval is importable): scripts/bench_eval.py.
A pytest part passes only when every selected test passed; a skip counts as a failure unless its reason is one the
part allows on this machine (one GPU: the second-GPU test).  ``passed`` is true when every required part passed.

``--smoke`` runs the same orchestration on CPU with tiny sizes (the flash_attn package computes exactly there,
transformers accepts it through tests/site); the test suite runs it.  No network.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ElementTree
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULT = "device_check"
IMPORTS = ["videorope_train.hook", "flash_attn", "triton", "llamafactory.train.tuner", "deepspeed", "datasets", "trl",
           "peft", "av", "omegaconf", "psutil", "lmms_eval"]
OPTIONAL_IMPORTS = {"lmms_eval"}  # the evaluation-time part only


class Check:
    """Options, paths, the environment children get, and the report written after every part."""

    def __init__(self, args):
        self.args = args
        self.out = Path(args.out).resolve()
        self.work = Path(args.work).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        self.started = time.monotonic()
        self.env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="offline", TOKENIZERS_PARALLELISM="false",
                        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "src"), str(REPO / "tools" /
                                                                                     "torch_flash_attn"),
                                                                 os.environ.get("PYTHONPATH")])))
        if args.smoke:  # transformers takes the flash_attn package on CPU only through tests/site's start-up
            self.env.update(PYTHONPATH=os.pathsep.join([str(REPO / "tests" / "site"), self.env["PYTHONPATH"]]),
                            FLASH_ATTN_CPU="1", FLASH_ATTN_CPU_ALLOW_FP32="1")
        self.report = {"passed": False, "mode": args.mode, "deadline s": args.deadline, "parts": {}}

    def left(self) -> float:
        return self.args.deadline - (time.monotonic() - self.started)

    def write(self) -> None:
        self.report["elapsed s"] = round(time.monotonic() - self.started, 1)
        for name, text in ((f"{RESULT}.json", json.dumps(self.report, indent=2) + "\n"),
                           (f"{RESULT}.md", markdown(self.report))):
            partial = self.out / (name + ".partial")
            partial.write_text(text)
            partial.replace(self.out / name)  # a reader never sees half a report

    def tool(self, name: str) -> str:
        """A command on the children's PATH (a --target install puts its scripts elsewhere than sys.executable)."""
        found = shutil.which(name, path=self.env.get("PATH"))
        if found is None:
            raise FileNotFoundError(f"{name} is not on PATH ({self.env.get('PATH')})")
        return found


def run(command, log: Path, env: dict, timeout: float, cwd=REPO) -> tuple[int, float]:
    """Run ``command`` with output to ``log``; (exit code, seconds).  124: past ``timeout`` (its process group
    killed); 127: could not start."""
    start = time.monotonic()
    with open(log, "a") as handle:
        handle.write(f"$ {' '.join(map(str, command))}\n")
        handle.flush()
        try:
            process = subprocess.Popen([str(c) for c in command], cwd=cwd, env=env, stdout=handle,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as error:
            handle.write(f"cannot start: {error}\n")
            return 127, 0.0
        try:
            code = process.wait(timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            kill_tree(process.pid)
            process.wait()
            code = 124
    return code, round(time.monotonic() - start, 1)


def kill_tree(pid: int) -> None:
    """SIGKILL a process and everything below it (torchrun's workers run in sessions of their own)."""
    import psutil

    try:
        parent = psutil.Process(pid)
        family = [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for process in family:
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass


def tail(log: Path, lines=25) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.is_file() else ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spread(samples: list[float]) -> dict:
    ordered = sorted(samples)
    return {"median": ordered[len(ordered) // 2], "min": ordered[0], "max": ordered[-1], "repeats": len(ordered)}


# ---------------------------------------------------------------------------------------------------------- parts


def environment(check: Check, budget: float) -> dict:
    import torch

    info = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda (torch)": torch.version.cuda,
            "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}
    for package in ("transformers", "tokenizers", "llamafactory", "deepspeed", "accelerate", "peft", "trl",
                    "datasets", "triton", "flash_attn", "av", "lmms_eval"):
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info[package] = None
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        info["nvidia-smi"] = smi.stdout.strip().splitlines()
    except (OSError, subprocess.TimeoutExpired) as error:
        info["nvidia-smi"] = f"unavailable ({error})"
    # the imports, in a child with the children's environment (what every later part runs with)
    probe = ("import importlib, json, sys\nfound = {}\nfor name in sys.argv[1:]:\n    try:\n"
             "        module = importlib.import_module(name)\n        found[name] = getattr(module, '__file__', '')\n"
             "    except Exception as error:\n        found[name] = f'FAILED {type(error).__name__}: {error}'\n"
             "print(json.dumps(found))")
    result = subprocess.run([sys.executable, "-c", probe, *IMPORTS], cwd=REPO, env=check.env, capture_output=True,
                            text=True, timeout=max(budget - 5, 10))
    imports = json.loads(result.stdout.strip().splitlines()[-1]) if result.returncode == 0 else {}
    missing = {name: text for name, text in imports.items() if str(text).startswith("FAILED")}
    info["imports"] = imports or f"probe failed: {result.stderr[-2000:]}"
    figures = floors(torch, check.args.smoke)
    required_missing = sorted(set(missing) - OPTIONAL_IMPORTS)
    if not torch.cuda.is_available() and not check.args.smoke:
        return {"status": "failed", "error": "no CUDA device visible (nvidia-smi, CUDA_VISIBLE_DEVICES)", **info}
    status = "passed" if imports and not required_missing else "failed"
    return {"status": status, "figures": figures, **info,
            **({"error": f"cannot import {', '.join(required_missing) or 'anything'}"} if status == "failed" else {})}


def floors(torch, smoke: bool) -> dict:
    """Device copy bandwidth (read + write) and the bf16 matmul ceiling: the floors speed figures are read against."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    elements, size, repeats = (2**26, 256, 3) if smoke or device == "cpu" else (2**28, 8192, 10)

    def timed(fn) -> list[float]:
        fn()  # warm-up
        samples = []
        for _ in range(repeats):
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            samples.append(time.perf_counter() - start)
        return samples

    source = torch.empty(elements // 32 if smoke else elements, dtype=torch.bfloat16, device=device)
    target = torch.empty_like(source)
    moved = 2 * source.numel() * source.element_size()
    copy = [moved / s / 1e9 for s in timed(lambda: target.copy_(source))]
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    matmul = [2 * size**3 / s / 1e12 for s in timed(lambda: a @ b)]
    return {"copy GB/s": spread(copy), "bf16 matmul TFLOP/s": spread(matmul), "device": device,
            "copy bytes": moved, "matmul size": size}


def pytest_part(check: Check, name: str, budget: float, tests: list[str], allowed_skips: list[str],
                env: dict | None = None) -> dict:
    """Selected tests; passed only if every one passed or was skipped for an allowed reason."""
    log, junit = check.work / f"{name}.log", check.work / f"{name}.xml"
    code, seconds = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", f"--junitxml={junit}",
                         *tests], log, env or check.env, timeout=budget)
    counts, bad_skips, failures = {"passed": 0, "failed": 0, "skipped": 0}, [], []
    if junit.is_file():
        for case in ElementTree.parse(junit).iter("testcase"):
            test = f"{case.get('classname')}::{case.get('name')}"
            skipped = case.find("skipped")
            failed = case.find("failure") if case.find("failure") is not None else case.find("error")
            if failed is not None:
                counts["failed"] += 1
                failures.append(test)
            elif skipped is not None:
                counts["skipped"] += 1
                reason = skipped.get("message", "")
                if not any(allowed in reason for allowed in allowed_skips):
                    bad_skips.append(f"{test}: {reason}")
            else:
                counts["passed"] += 1
    ok = code == 0 and counts["passed"] > 0 and not failures and not bad_skips
    result = {"status": "passed" if ok else "failed", "seconds": seconds, "tests": counts}
    if not ok:
        result["error"] = ("timed out" if code == 124 else f"pytest exit {code}") + (
            f"; failed: {failures[:10]}" if failures else "") + (f"; not allowed skips: {bad_skips[:10]}"
                                                                  if bad_skips else "")
        result["log"] = tail(log)
    return result


def allowed_skips(check: Check) -> list[str]:
    import torch

    allowed = ["needs two CUDA devices"] if torch.cuda.device_count() < 2 else []
    if check.args.smoke:  # the CUDA cases on a CPU machine
        allowed += ["no CUDA device here", "needs a CUDA device"]
    return allowed


def fused_rotary(check: Check, budget: float) -> dict:
    selection = ["-k", "compiles_for_gpus and sm90 and bf16"] if check.args.smoke else ["-k", "cuda or gpu"]
    tests = pytest_part(check, "fused_rotary", budget * 0.6, ["tests/test_fused_rotary.py", *selection],
                        allowed_skips(check))
    sizes = ["--tokens", "512", "--repeats", "2"] if check.args.smoke else ["--tokens", "8192", "32768"]
    bench = bench_rope(check, "bench_rope", budget - tests["seconds"], [*sizes, "--skip-step", "--index-batch", "1"])
    figures = bench.get("figures", {})
    result = {"status": "passed" if tests["status"] == bench["status"] == "passed" else "failed",
              "tests": tests, "figures": figures}
    if bench["status"] == "passed" and not check.args.smoke and not any("fused" in key for key in figures):
        result.update(status="failed", error="the fused rotary kernel was not timed: it did not run on this GPU")
    for part in (tests, bench):
        if part.get("error"):
            result["error"] = "; ".join(filter(None, [result.get("error"), part["error"]]))
    return result


def bench_rope(check: Check, name: str, budget: float, options: list[str]) -> dict:
    log, out = check.work / f"{name}.log", check.out / f"{name}.json"
    code, seconds = run([sys.executable, "scripts/bench_rope.py", *options, "--dtype", "bfloat16", "--out", out], log,
                        check.env, timeout=budget)
    if code:
        return {"status": "failed", "seconds": seconds, "error": f"bench_rope.py exit {code}", "log": tail(log)}
    report = json.loads(out.read_text())
    figures = {}
    for entry in report["rotary"]:
        for row_name in ("this project, fused (triton)", "this project", "stock M-RoPE", "authors' concat"):
            if row_name in entry["rows"]:
                row = entry["rows"][row_name]
                figures[f"{row_name}, {entry['tokens']} tokens"] = (
                    f"{row['ms_per_layer']:.3f} ms/layer, {row['x floor']:.2f}x floor")
        figures[f"q/k copy floor, {entry['tokens']} tokens"] = f"{entry['floor GB/s']:.0f} GB/s"
    step = report.get("step")
    if step:
        low, high = step["videorope/mrope (hook) ci95"]
        figures["videorope/mrope train step"] = f"{step['videorope/mrope (hook)']:.3f} (95% CI {low:.3f}-{high:.3f})"
        figures["step ms"] = ", ".join(f"{k} {v:.1f}" for k, v in step["ms"].items())
    return {"status": "passed", "seconds": seconds, "figures": figures}


def hooked_model(check: Check, budget: float) -> dict:
    # --smoke: test_gpu.py's cases on CPU (exact attention, eager rotary), so their code cannot rot between GPU draws
    env = dict(check.env, VIDEOROPE_GPU_TESTS_DEVICE="cpu") if check.args.smoke else check.env
    return pytest_part(check, "hooked_model", budget, ["tests/test_torch_flash_attn.py", "tests/test_gpu.py"],
                       allowed_skips(check), env)


def step_ratio(check: Check, budget: float) -> dict:
    options = (["--tokens", "256", "--repeats", "1", "--index-batch", "1", "--step-repeats", "2", "--step-hidden",
                "256", "--step-layers", "2"] if check.args.smoke else
               ["--tokens", "1024", "--repeats", "2", "--index-batch", "1", "--step-repeats", "20"])
    result = bench_rope(check, "bench_step", budget, options)
    if result["status"] == "passed":
        result["figures"] = {k: v for k, v in result["figures"].items() if "step" in k}
    return result


def model_size(check: Check) -> list[str]:
    if check.args.smoke:
        return []
    return ["--hidden-size", "1024", "--layers", "12", "--heads", "8", "--kv-heads", "2", "--mrope-section", "16", "24",
            "24"]


def prepared_model(check: Check, budget: float) -> tuple[Path, Path]:
    """A random Qwen2-VL (~100M parameters off --smoke) hooked with VideoRoPE δ=2, and the demo data beside it."""
    work = check.work / "model"
    if (work / "model-videorope" / "config.json").is_file():
        return work / "model-videorope", work / "data"
    work.mkdir(parents=True, exist_ok=True)
    cli = check.tool("videorope-train")
    deadline = time.monotonic() + budget
    for command in ([cli, "make-tiny-model", work / "base", *model_size(check)],
                    [cli, "prepare-model", "--base", work / "base", "--rope", "videorope", "--temporal-stride", "2",
                     "--out", work / "model-videorope"],
                    [cli, "make-demo-data", work / "data"]):
        code, _ = run(command, work / "setup.log", check.env, timeout=deadline - time.monotonic())
        if code:
            raise RuntimeError(f"{command[1]} failed (exit {code}):\n{tail(work / 'setup.log')}")
    shutil.copy(REPO / "data" / "dataset_info.json", work / "data" / "dataset_info.json")
    return work / "model-videorope", work / "data"


def losses(output_dir: Path) -> dict[int, float]:
    log = output_dir / "trainer_log.jsonl"
    out = {}
    for line in log.read_text().splitlines() if log.is_file() else []:
        entry = json.loads(line)
        if "loss" in entry:
            out[int(entry["current_steps"])] = float(entry["loss"])
    return out


def kernel_calls(prefix: Path) -> dict:
    """The flash_attn package's call counts summed over the processes of one run (FLASH_ATTN_CALLS_REPORT)."""
    totals = {}
    for path in prefix.parent.glob(f"{prefix.name}.*.json"):
        for name, count in json.loads(path.read_text()).items():
            totals[name] = totals.get(name, 0) + count
    return totals


def attention_proof(check: Check, calls: dict) -> str | None:
    """Why the calls do not prove flash-attention 2 ran where it should have, or None."""
    if not calls:
        return None if check.args.cluster else "no flash_attn call report: the flash_attn package was not used"
    entry = calls.get("flash_attn_varlen_func", 0) + calls.get("flash_attn_func", 0)
    kernel = "exact" if check.args.smoke else "torch_fa2_kernel"
    if entry == 0 or calls.get(kernel, 0) == 0:
        return f"flash-attention did not run on the {kernel} path: {calls}"
    return None


def train_and_resume(check: Check, budget: float) -> dict:
    """An uninterrupted run and, side by side, a run killed after checkpoint-(steps/2) and restarted by the local
    launcher; losses after the restart must follow the uninterrupted run's."""
    import torch

    deadline = time.monotonic() + budget
    model, data = prepared_model(check, budget / 3)
    steps, half = check.args.steps, check.args.steps // 2
    processes = torch.cuda.device_count() if check.args.cluster else 1
    work = check.work / "train"
    work.mkdir(exist_ok=True)
    overrides = [f"model_name_or_path={model}", f"dataset_dir={data}", "flash_attn=fa2",
                 "deepspeed=recipes/deepspeed/ds_z3_config.json", f"max_steps={steps}", f"save_steps={half}",
                 "per_device_train_batch_size=1", "gradient_accumulation_steps=1", "save_only_model=false",
                 "dataloader_num_workers=0", "report_to=none"]
    if not check.args.smoke:
        overrides.append("bf16=true")
    full, resumed = work / "uninterrupted", work / "resumed"

    def train_env(name):
        return dict(check.env, FORCE_TORCHRUN="1", NPROC_PER_NODE=str(processes), MASTER_PORT=str(free_port()),
                    FLASH_ATTN_CALLS_REPORT=str(work / f"calls-{name}"))

    llamafactory = check.tool("llamafactory-cli")

    def start(output_dir, name):
        handle = open(work / f"{name}.log", "w")
        return subprocess.Popen([llamafactory, "train", "recipes/tiny_cpu_sft.yaml", f"output_dir={output_dir}",
                                 *overrides], cwd=REPO, env=train_env(name), stdout=handle, stderr=subprocess.STDOUT,
                                start_new_session=True), handle

    side_by_side = not check.args.cluster  # a cluster run uses every GPU for each run, one after the other
    started = time.monotonic()
    uninterrupted = start(full, "uninterrupted")
    if not side_by_side:
        wait_for(uninterrupted, deadline)
    killed = start(resumed, "killed")
    checkpoint = resumed / f"checkpoint-{half}"
    # complete: every rank's RNG state and rank 0's trainer state (written last) are there
    rng = ["rng_state.pth"] if processes == 1 else [f"rng_state_{r}.pth" for r in range(processes)]
    written = [checkpoint / "trainer_state.json"] + [checkpoint / name for name in rng]
    while not all(path.is_file() for path in written) and killed[0].poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    kill_tree(killed[0].pid)  # as a node failure would
    killed[0].wait()
    killed[1].close()
    result = {"steps": steps, "processes per run": processes, "side by side": side_by_side,
              "parameters": parameters(model)}
    if not written[0].is_file():
        kill_tree(uninterrupted[0].pid)
        return {**result, "status": "failed", "error": f"no checkpoint-{half} before the kill",
                "log": tail(work / "killed.log")}
    restart_env = dict(train_env("resumed"), SKIP_DATA_CHECK="1")
    code, seconds = run(["bash", "scripts/train_local.sh", "recipes/tiny_cpu_sft.yaml", str(processes),
                         f"output_dir={resumed}", *overrides], work / "resumed.log", restart_env,
                        timeout=deadline - time.monotonic())
    full_code = wait_for(uninterrupted, deadline)
    result["wall s (both runs)"] = round(time.monotonic() - started, 1)
    if full_code:
        return {**result, "status": "failed", "error": f"the uninterrupted run failed (exit {full_code})",
                "log": tail(work / "uninterrupted.log")}
    if code:
        return {**result, "status": "failed", "error": f"the restart failed (exit {code})",
                "log": tail(work / "resumed.log")}
    want, got = losses(full), losses(resumed)
    after = [step for step in sorted(want) if step > half]
    if not after or any(step not in got for step in after):
        return {**result, "status": "failed",
                "error": f"the restarted run logged steps {sorted(got)}, expected {after}"}
    worst = max(abs(got[step] - want[step]) / max(abs(want[step]), 1e-6) for step in after)
    resumed_from = f"checkpoint-{half}" in (work / "resumed.log").read_text(errors="replace")
    # float32 on CPU: the same arithmetic in the same order, so the restart repeats the losses to rounding; bf16
    # kernels on GPU are not bit-deterministic (atomics in FA2's backward), and a step's loss moves by ~1% with them
    tolerance = 1e-4 if check.args.smoke else 2e-2
    # (the killed run cannot report: SIGKILL runs no exit handler)
    calls = {name: kernel_calls(work / f"calls-{name}") for name in ("uninterrupted", "resumed")}
    problems = [f"{name}: {why}" for name, why in ((n, attention_proof(check, c)) for n, c in calls.items()) if why]
    result.update({"losses (uninterrupted)": want, "losses (restarted)": got,
                   "max relative loss difference after restart": worst, "tolerance": tolerance,
                   "resumed from checkpoint": resumed_from, "flash_attn calls": calls})
    ok = resumed_from and worst <= tolerance and not problems
    if not ok:
        result["error"] = "; ".join(problems) or (
            f"restart did not resume from checkpoint-{half}" if not resumed_from else
            f"losses after the restart differ by {worst:.3g} > {tolerance}")
    return {**result, "status": "passed" if ok else "failed"}


def wait_for(started: tuple, deadline: float) -> int:
    process, handle = started
    try:
        code = process.wait(timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
        kill_tree(process.pid)
        process.wait()
        code = 124
    handle.close()
    return code


def parameters(model: Path) -> int:
    from math import prod

    from safetensors import safe_open

    total = 0
    for file in model.glob("*.safetensors"):
        with safe_open(str(file), "pt") as handle:
            total += sum(prod(handle.get_slice(name).get_shape()) for name in handle.keys())
    return total


def lora_zero2(check: Check, budget: float) -> dict:
    deadline = time.monotonic() + budget
    model, data = prepared_model(check, budget / 2)
    out = check.work / "lora"
    overrides = [f"model_name_or_path={model}", f"dataset_dir={data}", f"output_dir={out}", "finetuning_type=lora",
                 "lora_target=all", "flash_attn=fa2", "deepspeed=recipes/deepspeed/ds_z2_config.json", "max_steps=4",
                 "per_device_train_batch_size=1", "dataloader_num_workers=0", "report_to=none"]
    if not check.args.smoke:
        overrides.append("bf16=true")
    env = dict(check.env, FORCE_TORCHRUN="1", NPROC_PER_NODE="1", MASTER_PORT=str(free_port()),
               FLASH_ATTN_CALLS_REPORT=str(check.work / "calls-lora"))
    code, seconds = run([check.tool("llamafactory-cli"), "train", "recipes/tiny_cpu_sft.yaml", *overrides],
                        check.work / "lora.log", env, timeout=deadline - time.monotonic())
    got = losses(out)
    problem = (f"exit {code}" if code else "no adapter written" if not (out / "adapter_model.safetensors").is_file()
               else f"losses {got}" if len(got) != 4 or not all(v == v and abs(v) < 1e4 for v in got.values())
               else attention_proof(check, kernel_calls(check.work / "calls-lora")))
    result = {"status": "failed" if problem else "passed", "seconds": seconds, "losses": got}
    return {**result, "error": problem, "log": tail(check.work / "lora.log")} if problem else result


def evaluation_time(check: Check, budget: float) -> dict:
    """scripts/bench_eval.py: seconds per benchmark question through the lmms-eval backend, Qwen2-VL-7B's shape
    (random weights, VideoRoPE, bf16, fa2) at the 8k and 64k presets on a 2-min and a 30-min video."""
    imports = check.report["parts"].get("environment", {}).get("imports", {})
    if isinstance(imports, dict) and str(imports.get("lmms_eval", "")).startswith("FAILED"):
        return {"status": "skipped", "reason": "lmms_eval is not importable here (carry its wheels in a second call)"}
    if check.args.smoke:
        shape = ["--random", "tiny", "--contexts", "1024", "--durations", "20", "--video-size", "128", "192",
                 "--repeats", "1", "--decode-tokens", "2", "--attn", "flash_attention_2", "--dtype", "float32",
                 "--device", "cpu"]
    else:
        shape = ["--random", "qwen2-vl-7b", "--contexts", "8k", "64k", "--durations", "120", "1800", "--repeats", "2",
                 "--video-fps", "2", "--attn", "flash_attention_2"]
    log, out = check.work / "bench_eval.log", check.out / "bench_eval.json"
    code, seconds = run([sys.executable, "scripts/bench_eval.py", *shape, "--out", out], log, check.env,
                        timeout=budget)
    if code:
        return {"status": "failed", "seconds": seconds, "error": f"bench_eval.py exit {code}", "log": tail(log)}
    report = json.loads(out.read_text())
    figures = {}
    for row in report["rows"]:
        hours = ", ".join(f"{name} {value:.1f} h" for name, value in row["hours"].items())
        figures[f"{row['context']}, {row['video s']:g} s video"] = (
            f"{row['input tokens']} tokens, read {row['read s']['median']:.2f} s ({row['source frames']} "
            f"source frames), processor {row['processor s']['median']:.2f} s, prefill "
            f"{row['prefill s']['median']:.2f} s, decode {row['decode s/token']['median'] * 1e3:.1f} ms/token, "
            f"{row['question s']:.2f} s/question; {hours}")
    return {"status": "passed", "seconds": seconds, "figures": figures}


# name, function, seconds it needs at least, cap in seconds, required for "passed"
PARTS = [
    ("environment", environment, 20, 60, True),
    ("fused rotary", fused_rotary, 60, 150, True),
    ("hooked model", hooked_model, 60, 150, True),
    ("step ratio", step_ratio, 30, 90, True),
    ("train + resume", train_and_resume, 120, 300, True),
    ("LoRA + ZeRO-2", lora_zero2, 45, 90, False),
    ("evaluation time", evaluation_time, 120, 300, False),
]


def figure(value) -> str:
    if isinstance(value, dict) and "median" in value:
        return f"{value['median']:.4g} (min {value['min']:.4g}, max {value['max']:.4g}, {value['repeats']} repeats)"
    return str(value)


def markdown(report: dict) -> str:
    lines = [f"# {RESULT}: {'PASSED' if report['passed'] else 'NOT PASSED'} ({report['mode']}, "
             f"{report.get('elapsed s', 0):.0f} s of {report['deadline s']} s)", "",
             "| part | status | seconds | note |", "|---|---|---|---|"]
    for name, part in report["parts"].items():
        note = part.get("error") or part.get("reason") or ""
        lines.append(f"| {name} | {part['status']} | {part.get('seconds', '')} | {str(note)[:300]} |")
    env = report["parts"].get("environment", {})
    keys = ["torch", "cuda (torch)", "gpus", "transformers", "llamafactory", "deepspeed", "triton", "flash_attn"]
    lines += ["", "| environment | |", "|---|---|", *(f"| {key} | {env.get(key)} |" for key in keys if key in env)]
    for name, part in report["parts"].items():
        figures = part.get("figures")
        if figures and part["status"] == "passed":
            lines += ["", f"| {name} | value |", "|---|---|"]
            lines += [f"| {key} | {figure(value)} |" for key, value in figures.items()]
    train = report["parts"].get("train + resume", {})
    if "max relative loss difference after restart" in train:
        lines += ["", "| train + resume | value |", "|---|---|"]
        lines += [f"| {key} | {train[key]} |" for key in ("parameters", "steps", "processes per run", "side by side",
                                                          "wall s (both runs)", "resumed from checkpoint",
                                                          "max relative loss difference after restart", "tolerance",
                                                          "flash_attn calls") if key in train]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=RESULT, help="the reports and benchmark JSON (few files)")
    parser.add_argument("--work", default=None, help="logs and training outputs (default: work_dirs/<out name>)")
    parser.add_argument("--deadline", type=float, default=None,
                        help="seconds for the whole check (default 460; --cluster: 1800)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default 20; --smoke: 4)")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny sizes (the test suite runs this)")
    parser.add_argument("--cluster", action="store_true",
                        help="a cluster node with the pinned stack: every visible GPU, the installed flash-attn")
    parser.add_argument("--parts", nargs="+", choices=[name for name, *_ in PARTS], default=None,
                        help="run only these parts")
    args = parser.parse_args(argv)
    args.mode = "smoke" if args.smoke else "cluster" if args.cluster else "device"
    args.deadline = args.deadline or (1800.0 if args.cluster else 460.0)
    args.steps = args.steps or (4 if args.smoke else 20)
    args.work = args.work or str(REPO / "work_dirs" / Path(args.out).name)
    check = Check(args)
    for name, function, minimum, cap, required in PARTS:
        if args.parts and name not in args.parts:
            continue
        left = check.left()
        if left < minimum:
            check.report["parts"][name] = {"status": "skipped", "required": required,
                                           "reason": f"{left:.0f} s left of the deadline, the part needs {minimum} s"}
        else:
            print(f"[{RESULT}] {name} (up to {min(cap, left):.0f} s)", flush=True)
            start = time.monotonic()
            try:
                result = function(check, min(cap, left))
            except Exception as error:  # noqa: BLE001 -- a part that crashes is a failed part, the rest still runs
                result = {"status": "failed", "error": f"{type(error).__name__}: {error}",
                          "log": traceback.format_exc()[-3000:]}
            result.setdefault("seconds", round(time.monotonic() - start, 1))
            check.report["parts"][name] = {**result, "required": required}
        check.report["passed"] = all(part["status"] == "passed" for part in check.report["parts"].values()
                                     if part["required"])
        check.write()
        part = check.report["parts"][name]
        print(f"[{RESULT}] {name}: {part['status']} {part.get('error') or part.get('reason') or ''}", flush=True)
    print(markdown(check.report))
    print(f"written {check.out / (RESULT + '.json')} and {check.out / (RESULT + '.md')}")
    return 0 if check.report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
