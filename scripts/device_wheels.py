#!/usr/bin/env python
"""``make device-wheels``: the wheels a bare GPU machine needs for ``scripts/device_check.sh``, into ``.whl/``.

    python scripts/device_wheels.py [--dir .whl] [--limit-mib 60] [--update-lock]

The machine (see docs/device_check.md) has torch 2.11 + CUDA 13, triton, transformers 5.17, accelerate, peft,
pandas, pyarrow, pytest — and no network.  The pinned set (``tools/device-wheels.lock``: name==version and the sha256
of the file downloaded) adds what the project and LLaMA-Factory 0.9.5 need on top: transformers 5.6.0 (with the
tokenizers it accepts), LLaMA-Factory, DeepSpeed (the registry has only its sdist: a pure-Python wheel is built here
with ``DS_BUILD_OPS=0``, so the lock pins the sdist's hash), datasets, trl, peft, omegaconf, PyAV and their
missing dependencies.  Binary wheels are taken for CPython 3.12 on manylinux x86_64, whatever this machine is.
Refuses to finish above ``--limit-mib`` (each device call carries 64 MiB in all, the working tree included).
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "tools" / "device-wheels.lock"
PLATFORM = ["--python-version", "3.12", "--implementation", "cp", "--abi", "cp312", "--abi", "abi3", "--abi", "none",
            "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
            "--platform", "manylinux2014_x86_64", "--platform", "any"]
BUILT_FROM_SDIST = {"deepspeed"}


def read_lock() -> list[tuple[str, str]]:
    """[(name==version, sha256 or "")] in the lock's order."""
    entries = []
    for line in LOCK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            spec, *digest = line.split()
            entries.append((spec, digest[0] if digest else ""))
    return entries


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pip(*args: str, env=None) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True, env=env)


def fetch(spec: str, into: Path) -> Path:
    """Download ``spec`` (a wheel, or for DeepSpeed its sdist) into ``into``; returns the file."""
    before = set(into.iterdir())
    name = spec.split("==")[0]
    if name in BUILT_FROM_SDIST:
        pip("download", "--quiet", "--no-deps", "--no-binary=:all:", "-d", str(into), spec)
    else:
        pip("download", "--quiet", "--no-deps", "--only-binary=:all:", *PLATFORM, "-d", str(into), spec)
    (new,) = set(into.iterdir()) - before
    return new


def build_wheel(sdist: Path, into: Path) -> Path:
    """DeepSpeed without its compiled ops (they are built just in time where used; ZeRO without offload needs none)."""
    import os

    env = dict(os.environ, DS_BUILD_OPS="0", DS_BUILD_STRING="")
    # without build isolation (DeepSpeed's setup.py imports the torch installed here): the builder's own tools
    pip("install", "--quiet", "setuptools>=70.1", "wheel")
    before = set(into.iterdir())
    pip("wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(into), str(sdist), env=env)
    (new,) = set(into.iterdir()) - before
    return new


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default=str(REPO / ".whl"))
    parser.add_argument("--limit-mib", type=float, default=60.0)
    parser.add_argument("--update-lock", action="store_true", help="record the hashes of what was downloaded")
    args = parser.parse_args(argv)

    out = Path(args.dir)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    entries, recorded, problems = read_lock(), [], []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        for spec, want in entries:
            file = fetch(spec, scratch)
            got = sha256(file)
            recorded.append((spec, got))
            if want and got != want and not args.update_lock:
                problems.append(f"{file.name}: sha256 {got}, the lock says {want}")
            if spec.split("==")[0] in BUILT_FROM_SDIST:
                file = build_wheel(file, scratch)
            shutil.move(str(file), out / file.name)
    if args.update_lock:
        header = [line for line in LOCK.read_text().splitlines() if line.startswith("#")]
        LOCK.write_text("\n".join(header + [f"{spec} {digest}" for spec, digest in recorded]) + "\n")
    if problems:
        print("device-wheels: hash mismatch\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    total = sum(path.stat().st_size for path in out.iterdir())
    for path in sorted(out.iterdir()):
        print(f"  {path.stat().st_size / 2**20:6.1f} MiB  {path.name}")
    print(f"device-wheels: {len(entries)} wheels, {total / 2**20:.1f} MiB in {out}")
    if total > args.limit_mib * 2**20:
        print(f"device-wheels: {total / 2**20:.1f} MiB is above the {args.limit_mib:g} MiB limit "
              "(a device call carries 64 MiB in all, the working tree included)", file=sys.stderr)
        return 1
    relative = out.relative_to(REPO) if out.is_relative_to(REPO) else out
    print("\nOn the GPU machine (the device tool's `run`, carrying the wheels):\n"
          f"  run(command='bash scripts/device_check.sh --wheels {relative} --out $OUT', carry=['{relative}'], "
          "timeout_s=540)\n"
          "(the check keeps to its --deadline, 460 s by default, so a rerun fits in a 15-minute device budget)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
