"""scripts/slurm/train.sbatch on a REAL two-node Slurm cluster stood up on this machine (tests/slurm/cluster.sh).

Real Debian slurm-wlm daemons (slurmctld + two `slurmd -N nodeX`) and munge, all as root; the test installs the
packages with apt-get when they are missing and skips (with the reason) when it is not root or cannot install them.
The tiny CPU recipe trains on both "nodes" (srun -> llamafactory-cli -> torchrun, gloo), and:
  A. the job COMPLETES, both node ranks took part, and the checkpoint reloads as the hooked VideoRoPE model;
  B. when rank 1 (the srun task on node2) dies, at start or mid-training, the whole job ends FAILED within seconds
     and leaves no process behind. At start, rank 0 would otherwise wait at torchrun's rendezvous for many minutes:
     there only `srun --kill-on-bad-exit=1` in train.sbatch ends the job fast.
Runs as root in CI (about a minute here, plus the apt-get install the first time); `pytest -rs` shows skip reasons.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import free_ports, load_hooked

REPO = Path(__file__).resolve().parents[1]
HARNESS = REPO / "tests" / "slurm" / "cluster.sh"
BIN = Path(sys.executable).parent
VENV = BIN.parent
SBIN_PATH = f"{os.environ.get('PATH', '')}:/usr/local/sbin:/usr/sbin:/sbin"
PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
BINARIES = ["slurmctld", "slurmd", "sbatch", "scontrol", "munged"]
ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD",
          "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT"}


def _missing():
    return [name for name in BINARIES if shutil.which(name, path=SBIN_PATH) is None]


def _skip_reason():
    if os.geteuid() != 0:
        return "a real Slurm cluster needs root (its daemons and jobs run as root); not root here"
    if _missing() and shutil.which("apt-get", path=SBIN_PATH) is None:
        return f"Slurm is not installed (missing {', '.join(_missing())}) and there is no apt-get to install it"
    return None


pytestmark = [pytest.mark.slow, pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))]


def _ensure_slurm():
    """apt-get install the Slurm + munge packages when they are missing (the module is skipped, with the reason,
    where that is impossible: pytestmark above)."""
    if not _missing():
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", PATH=SBIN_PATH)
    install = ["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES]
    result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:  # stale package lists
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, text=True, timeout=900)
        result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"apt-get install {' '.join(PACKAGES)} failed:\n{result.stdout[-3000:]}" \
                                   f"\n{result.stderr[-3000:]}"
    assert not _missing(), f"still missing after apt-get install: {_missing()}"


class Cluster:
    def __init__(self, root, env):
        self.root, self.env = root, env

    def run(self, *command, timeout=60):
        return subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=timeout)

    def job(self, job_id):
        """`scontrol show job` as a dict (JobState, ExitCode, NodeList, ...)."""
        result = self.run("scontrol", "show", "job", "-o", str(job_id))
        assert result.returncode == 0, result.stderr
        return dict(re.findall(r"(\w+)=(\S*)", result.stdout))

    def wait(self, job_id, timeout):
        deadline = time.monotonic() + timeout
        while True:
            info = self.job(job_id)
            if info.get("JobState") not in ACTIVE:
                return info
            if time.monotonic() > deadline:
                self.run("scancel", str(job_id))
                pytest.fail(f"job {job_id} still {info.get('JobState')} after {timeout} s")
            time.sleep(1)

    def logs(self):
        return "\n".join(f"--- {path.name}\n" + path.read_text(errors="replace")[-3000:]
                         for path in sorted((self.root / "log").glob("*")) if path.is_file())


@pytest.fixture(scope="module")
def cluster():
    _ensure_slurm()
    root = Path(f"/tmp/videorope-slurm-{os.getpid()}")
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    ctld_port, *slurmd_ports = free_ports(3)
    env = dict(os.environ, ROOT=str(root), CTLD_PORT=str(ctld_port), SLURMD_PORTS=" ".join(map(str, slurmd_ports)),
               PATH=SBIN_PATH, SLURM_CONF=str(root / "etc" / "slurm.conf"))
    harness = ["bash", str(HARNESS)]
    try:
        up = subprocess.run([*harness, "up"], env=env, capture_output=True, text=True, timeout=300)
        assert up.returncode == 0, f"cluster.sh up failed:\n{up.stdout}\n{up.stderr}"
        yield Cluster(root, env)
    finally:
        down = subprocess.run([*harness, "down"], env=env, capture_output=True, text=True, timeout=300)
        assert down.returncode == 0, f"cluster.sh down left something behind:\n{down.stdout}\n{down.stderr}"
        shutil.rmtree(root, ignore_errors=True)


def _submit(cluster, tmp_path, name, overrides, via_submit_script=False, extra_env=None):
    """sbatch train.sbatch directly, or through scripts/slurm/submit.sh (which checks the data first)."""
    env = dict(cluster.env, **(extra_env or {}), RECIPE="recipes/tiny_cpu_sft.yaml", GPUS_PER_NODE="1", GLOBAL_BATCH="2",
               PATH=f"{BIN}:{cluster.env['PATH']}", HF_HUB_OFFLINE="1", MASTER_PORT=str(free_ports(1)[0]),
               OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", DATA_CHECK_DIR=str(tmp_path / f"{name}-check"),
               NO_GPU_GRES="1")
    if (VENV / "bin" / "activate").is_file():
        env["VENV"] = str(VENV)
    flags = ["--parsable", f"--job-name={name}", "--ntasks-per-node=1", f"--output={tmp_path}/%x-%j.out",
             f"--chdir={REPO}", "--export=ALL", "--time=30"]  # > train.sbatch's stop lead
    if via_submit_script:
        command = ["bash", str(REPO / "scripts" / "slurm" / "submit.sh"), "recipes/tiny_cpu_sft.yaml", "2", "1",
                   *flags, "--", *overrides]
    else:
        command = ["sbatch", "--nodes=2", *flags, str(REPO / "scripts" / "slurm" / "train.sbatch"), *overrides]
    result = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"submission failed: {result.stderr[-3000:]}\n{cluster.logs()}"
    job_id = result.stdout.strip().splitlines()[-1].split(";")[0]
    return job_id, tmp_path / f"{name}-{job_id}.out", result.stdout


def _overrides(hooked_dir, demo_dataset_dir, out, max_steps):
    return [f"model_name_or_path={hooked_dir('videorope')}", f"dataset_dir={demo_dataset_dir}", f"output_dir={out}",
            "per_device_train_batch_size=1", f"max_steps={max_steps}"]


def _job_processes(cluster, job_id):
    """{pid: environ} of every process of the job (its environment names the job and this cluster's SLURM_CONF)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = dict(item.split("=", 1) for item in (entry / "environ").read_bytes().decode(errors="replace")
                           .split("\0") if "=" in item)
        except OSError:
            continue
        if environ.get("SLURM_JOB_ID") == str(job_id) and environ.get("SLURM_CONF") == cluster.env["SLURM_CONF"]:
            found[int(entry.name)] = environ
    return found


def _cmdline(pid):
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


ZERO3 = ["deepspeed=recipes/deepspeed/ds_z3_config.json"]


@pytest.fixture(scope="module")
def finished_job(cluster, hooked_dir, demo_dataset_dir, tmp_path_factory):
    """One uninterrupted two-node job through scripts/slurm/submit.sh: 6 steps of ZeRO-3 (the authors' recipe). The
    completion test reads it, and the stop test compares its restarted run with it (one 2-node run, not two)."""
    tmp_path = tmp_path_factory.mktemp("slurm-ok")
    out = tmp_path / "out"
    job_id, log, submitted = _submit(cluster, tmp_path, "videorope-ok",
                                     _overrides(hooked_dir, demo_dataset_dir, out, 6) + ZERO3, via_submit_script=True)
    info = cluster.wait(job_id, timeout=480)
    return {"tmp": tmp_path, "out": out, "id": job_id, "info": info, "submitted": submitted,
            "text": log.read_text(errors="replace") if log.exists() else "(no job log)"}


def test_two_node_training_completes(cluster, finished_job):
    job_id, info, text, out = finished_job["id"], finished_job["info"], finished_job["text"], finished_job["out"]
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", \
        f"{info.get('JobState')} {info.get('ExitCode')}\n{text[-6000:]}\n{cluster.logs()}"
    assert info["NumNodes"] == "2" and info["NodeList"] == "node[1-2]", info
    # Both node ranks took part: each slurmd launched a task of the step; each srun task started torchrun with its
    # own node rank (NODE_RANK=$SLURM_NODEID); both training processes joined one world of 2 (gloo); the global
    # batch of 2 came from 2 nodes x 1 process x 1 sample, without accumulation.
    for node in ("node1", "node2"):
        assert f"launch task StepId={job_id}.0 " in (cluster.root / "log" / f"slurmd-{node}.log").read_text(), node
    for rank in (0, 1):
        assert f"Multi-node training enabled: num nodes: 2, node rank: {rank}" in text, text[-6000:]
        assert f"Process rank: {rank}, world size: 2, " in text, text[-6000:]
    assert "2 node(s) x 1," in text and "gradient_accumulation_steps=1 " in text
    assert re.search(r"Total train batch size \(w\. parallel, distributed & accumulation\) = 2\b", text)
    # the data were checked before submission (submit.sh), not inside the allocation
    assert "all samples OK" in finished_job["submitted"] and "all samples OK" not in text
    assert not json.loads((finished_job["tmp"] / "videorope-ok-check" / "report.json").read_text())["would_crash"]
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    model = load_hooked(out)
    assert model.rope.variant == "videorope"


def _kill_tree(pids):
    """SIGSTOP then SIGKILL: nothing in the tree can react (or fork) in between."""
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


@pytest.mark.parametrize("moment", ["at_start", "mid_training"])
def test_dead_rank_fails_the_job_fast(cluster, hooked_dir, demo_dataset_dir, tmp_path, moment):
    """Rank 1 (the srun task on node2) dies; the whole job must end FAILED within seconds, nothing left running.

    at_start:     the rank-1 task is killed before its training process exists. Rank 0 then waits at torchrun's
                  rendezvous and would do so for many minutes: only `srun --kill-on-bad-exit=1` ends the job fast.
    mid_training: the rank-1 training process is SIGKILLed after the first logged step (a crashed worker).
    """
    # Far more steps than can finish: the job can only end because rank 1 dies.
    job_id, log, _ = _submit(cluster, tmp_path, f"videorope-{moment}",
                          _overrides(hooked_dir, demo_dataset_dir, tmp_path / "out", 100000))
    deadline = time.monotonic() + 300

    def rank1_task():  # every process of the srun step on node2 (slurmstepd itself carries no SLURM_JOB_ID)
        return {pid: env for pid, env in _job_processes(cluster, job_id).items()
                if env.get("SLURM_NODEID") == "1" and env.get("SLURM_STEP_ID") == "0"}

    def ready():
        if moment == "at_start":
            return bool(rank1_task())
        return "{'loss':" in (log.read_text(errors="replace") if log.exists() else "")  # training under way

    while not ready():
        info = cluster.job(job_id)
        assert info["JobState"] in ACTIVE, f"job ended too early: {info['JobState']}\n" \
                                           f"{log.read_text(errors='replace')[-6000:] if log.exists() else ''}"
        assert time.monotonic() < deadline, f"job {job_id} never reached the {moment} point"
        time.sleep(0.05)
    task = rank1_task()
    assert task and all(env.get("SLURMD_NODENAME") == "node2" for env in task.values())
    if moment == "at_start":
        victims = sorted(task)
        assert not any("launcher.py" in _cmdline(pid) for pid in victims), "rank 1 was already training"
    else:
        victims = [pid for pid, env in task.items() if env.get("RANK") == "1" and "launcher.py" in _cmdline(pid)]
        assert len(victims) == 1, {pid: _cmdline(pid) for pid in task}
    killed_at = time.monotonic()
    _kill_tree(victims)
    info = cluster.wait(job_id, timeout=120)
    elapsed = time.monotonic() - killed_at
    text = log.read_text(errors="replace")
    print(f"job {job_id} ({moment}): {info['JobState']} {info['ExitCode']} {elapsed:.1f} s after the kill")
    assert info["JobState"] == "FAILED", f"{info['JobState']} {info['ExitCode']}\n{text[-6000:]}"
    assert elapsed < 120
    assert re.search(r"srun: error: node2: task 1: (Exited with exit code [1-9]|Killed)", text), text[-6000:]
    if moment == "at_start":  # rank 0 did not fail by itself: srun terminated it
        assert re.search(rf"STEP {job_id}\.0 ON node1 CANCELLED|node1: task 0: Terminated", text), text[-6000:]
    time.sleep(1)
    assert not _job_processes(cluster, job_id), "processes of the failed job are still running"


def test_stop_signal_checkpoints_requeues_and_resumes(cluster, hooked_dir, demo_dataset_dir, tmp_path, finished_job):
    """What Slurm sends before a time limit (train.sbatch: --signal=B:USR1@600), sent by hand to the batch shell
    while both ranks are at step 3: both nodes save checkpoint-3 (save_steps is 1000, so only the stop writes one)
    and exit, the job requeues itself, comes back (restart 1), resumes from step 3 and completes; its losses and
    final weights equal the uninterrupted two-node run's (``finished_job``). ZeRO-3, as the authors' recipe (plain
    DDP cannot resume on CPU at all: transformers loads the optimizer state with map_location=cpu:0, which torch.load
    rejects)."""
    from conftest import SITE
    from safetensors.torch import load_file

    zero3 = ZERO3
    reference = finished_job["out"]
    assert finished_job["info"]["JobState"] == "COMPLETED", finished_job["text"][-6000:]

    out = tmp_path / "out"
    job_id, log, _ = _submit(cluster, tmp_path, "videorope-stop",
                             _overrides(hooked_dir, demo_dataset_dir, out, 6) + zero3, extra_env={"PYTHONPATH": SITE, "VIDEOROPE_HOLD_AT_STEP": "3"})
    deadline = time.monotonic() + 480
    while not all((out / f"held-at-step-3.{rank}").exists() for rank in (0, 1)):  # both ranks wait at step 3
        info = cluster.job(job_id)
        assert info["JobState"] in ACTIVE and time.monotonic() < deadline, \
            f"{info['JobState']}: never reached step 3\n{log.read_text(errors='replace')[-6000:] if log.exists() else ''}"
        time.sleep(0.5)
    signalled = cluster.run("scancel", "--batch", "--signal=USR1", job_id)
    assert signalled.returncode == 0, signalled.stderr
    info = cluster.wait(job_id, timeout=600)  # the requeue waits out the credential (CredExpire, tests/slurm)
    text = log.read_text(errors="replace")
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", f"{info}\n{text[-8000:]}\n{cluster.logs()}"
    assert "SIGUSR1: checkpoint at the next step, then requeue" in text
    assert "stop requested: saving checkpoint-3" in text and "stopped on request, requeueing" in text
    assert f"job {job_id} restart 1:" in text and f"resume_from_checkpoint={out / 'checkpoint-3'}" in text
    finals = sorted(p.name for p in reference.glob("checkpoint-*"))  # the Trainer's own end-of-run checkpoint
    assert sorted(p.name for p in out.glob("checkpoint-*")) == sorted(["checkpoint-3", *finals])

    def losses(run):
        state = json.loads((run / "trainer_state.json").read_text())
        return {entry["step"]: entry["loss"] for entry in state["log_history"] if "loss" in entry}

    assert sorted(losses(out)) == list(range(1, 7))
    assert losses(out) == pytest.approx(losses(reference), abs=1e-6)
    want, got = load_file(reference / "model.safetensors"), load_file(out / "model.safetensors")
    assert max((want[k] - got[k]).abs().max().item() for k in want) <= 1e-6
    time.sleep(1)
    assert not _job_processes(cluster, job_id), "processes of the job are still running"
