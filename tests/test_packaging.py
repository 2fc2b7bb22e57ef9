"""Packaging states the support window: pyproject.toml's ranges, the import gate and the tested pins agree."""

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]


def _declared() -> dict:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {Requirement(item).name: Requirement(item).specifier for item in project["dependencies"]}


def _pins() -> dict:
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        requirement = line.split("#", 1)[0].strip()
        if requirement:
            parsed = Requirement(requirement)
            (spec,) = parsed.specifier
            pins[parsed.name] = Version(spec.version)
    return pins


def _makefile(name: str) -> Version:
    return Version(re.search(rf"^{name} := (\S+)$", (REPO / "Makefile").read_text(), re.M).group(1))


def test_the_import_gate_declares_what_pyproject_declares():
    from packaging.specifiers import SpecifierSet

    from videorope_train.hook import SUPPORTED

    declared = _declared()
    for package, supported in SUPPORTED.items():
        assert declared[package] == SpecifierSet(supported), (package, str(declared[package]), supported)


@pytest.mark.parametrize("package, version", [
    ("transformers", "5.6.0"), ("transformers", "5.8.0"),  # the window's ends
    ("llamafactory", "0.9.5"), ("llamafactory", "0.9.6.dev0"),  # the registry's release, the main branch
    ("torch", "2.8.0"), ("torch", "2.11.0"),
])
def test_both_ends_of_the_window_are_declared(package, version):
    assert _declared()[package].contains(version, prereleases=True)


@pytest.mark.parametrize("package, version", [
    ("transformers", "5.5.4"), ("transformers", "5.8.1"), ("llamafactory", "0.9.4"), ("llamafactory", "0.9.6"),
    ("torch", "2.7.1"), ("torch", "2.12.0"),
])
def test_releases_outside_the_window_are_not(package, version):
    assert not _declared()[package].contains(version, prereleases=True)


def test_the_tested_set_lies_inside_the_window():
    """The exact pins (the window's low end) and the releases `make test` adds (its high end) are all declared."""
    declared, pins = _declared(), _pins()
    for package, specifier in declared.items():
        if package in pins:
            assert specifier.contains(pins[package], prereleases=True), (package, pins[package], str(specifier))
    assert declared["transformers"].contains(_makefile("NEWEST_TRANSFORMERS"))
    assert declared["torch"].contains(_makefile("NEWEST_TORCH"))
    assert set(declared) - {"numpy", "packaging", "pillow", "pyyaml", "tqdm"} <= set(pins), "pin what you declare"


def test_the_installed_environment_is_consistent():
    """`pip check` where the suite runs (requirements.txt, then this package): no requirement of ours, or of what
    we pin, is broken."""
    result = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_wheel_carries_the_example_lmms_task(tmp_path):
    """`make-lmms-example` copies its task's YAML and utils.py out of the installed package; a YAML is in a wheel
    only where pyproject.toml declares it package data."""
    from videorope_train.eval.lmms_example import TASK_FILES

    tree = tmp_path / "tree"  # a clean copy: a build in the checkout would reuse the file list of its egg-info
    shutil.copytree(REPO / "src", tree / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, tree / name)
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                             "-w", str(tmp_path / "dist"), str(tree)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    shipped = {f"videorope_train/eval/lmms_tiny_task/{name}" for name in TASK_FILES}
    assert shipped <= set(zipfile.ZipFile(wheel).namelist())
