"""The package's layers import only downward (docs/architecture.md), read statically from src/ with ast.

Every import counts, function-level ones included (a lazy import is still a dependency), and so does what an
import reaches through other modules.  The last test imports the hook in a fresh interpreter.
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "videorope_train"

# A unit: a top-level module, or a sub-package as a whole.  What each may reach (transitively), bottom to top.
ALLOWED = {
    "rope": set(),
    "video": set(),
    "files": set(),
    "graceful_stop": set(),
    "recipe": set(),
    "preflight": set(),
    "base": set(),
    "tiny": set(),
    "__init__": set(),
    "hook": {"__init__", "rope", "video"},
    "stop_callback": {"graceful_stop"},
    "data": {"__init__", "rope", "video", "files", "recipe"},
    "eval": {"__init__", "rope", "video", "files", "data"},
    "launch": {"rope", "graceful_stop", "recipe", "preflight"},
    "repro": {"__init__", "rope", "video", "files", "hook", "tiny"},
}
TOP = "cli"  # the command line may reach everything


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set:
    """Package modules ``path`` imports (absolute names), from any scope."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)  # `from . import x` names a module
    return {m for m in found if m == PACKAGE or m.startswith(PACKAGE + ".")}


def _graph() -> dict:
    modules = {_module_name(p): p for p in (SRC / PACKAGE).rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        graph[name] = set()
        for target in _imports(path):
            while target not in modules and "." in target:  # `from .x import name`: the module is x
                target = target.rpartition(".")[0]
            if target != name:
                graph[name].add(target)
    return graph


def _unit(module: str) -> str:
    parts = module.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


def _reach(graph: dict, start: str) -> dict:
    """Every module ``start`` reaches, with the chain that reaches it (for the error message)."""
    seen, stack = {start: [start]}, [start]
    while stack:
        current = stack.pop()
        for target in graph.get(current, ()):
            if target not in seen:
                seen[target] = seen[current] + [target]
                stack.append(target)
    return seen


def test_every_unit_has_a_layer():
    units = {_unit(m) for m in _graph()}
    assert units - set(ALLOWED) - {TOP} == set(), "a new module needs a place in ALLOWED and docs/architecture.md"


@pytest.mark.parametrize("unit", sorted(ALLOWED))
def test_imports_only_go_down(unit):
    graph = _graph()
    wrong = []
    for module in sorted(m for m in graph if _unit(m) == unit):
        for target, chain in sorted(_reach(graph, module).items()):
            if _unit(target) not in ALLOWED[unit] | {unit}:
                wrong.append(" -> ".join(chain))
    assert not wrong, f"{unit} may reach only {sorted(ALLOWED[unit])}:\n" + "\n".join(wrong)


def test_the_rope_core_imports_no_framework():
    frameworks = ("transformers", "llamafactory", "deepspeed", "accelerate", "yaml")
    for path in (SRC / PACKAGE / "rope").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not [n for n in names if n.split(".")[0] in frameworks], f"{path.name} imports {names}"


def test_the_checker_sees_a_wrong_import(tmp_path, monkeypatch):
    """The checker itself: a hook module importing the launcher lazily is caught, through a chain."""
    fake = tmp_path / PACKAGE
    (fake / "hook").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "launch.py").write_text("import yaml\n")
    (fake / "hook" / "__init__.py").write_text("from . import common\n")
    (fake / "hook" / "common.py").write_text("def f():\n    from ..launch import x\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", tmp_path)
    graph = _graph()
    assert "videorope_train.launch" in _reach(graph, "videorope_train.hook")
    assert _reach(graph, "videorope_train.hook")["videorope_train.launch"] == [
        "videorope_train.hook", "videorope_train.hook.common", "videorope_train.launch"]


def test_importing_the_hook_loads_no_training_or_data_code():
    """In a fresh interpreter: the package modules importing the hook loads, and whether it adds yaml to what
    transformers' own Qwen2-VL modules load (huggingface_hub imports yaml itself)."""
    code = (
        "import sys, json\n"
        "import transformers.models.qwen2_vl.modeling_qwen2_vl, transformers.models.qwen2_5_vl.modeling_qwen2_5_vl\n"
        "stock_yaml = 'yaml' in sys.modules\n"
        "import videorope_train.hook\n"
        "print(json.dumps({'stock_yaml': stock_yaml, 'yaml': 'yaml' in sys.modules,\n"
        "  'ours': sorted(m for m in sys.modules if m.startswith('videorope_train'))}))\n"
    )
    result = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                       check=True).stdout.splitlines()[-1])
    assert result["yaml"] == result["stock_yaml"]
    units = {_unit(m) for m in result["ours"]}
    assert units <= {"__init__", "rope", "hook", "video"}, result["ours"]
    assert "videorope_train.hook" in result["ours"]


def test_the_harnesses_import_nothing_of_lmms_eval():
    """V-NIAH, V-RULER (its stack included) and `eval paper` share eval/video.py with the lmms-eval backend, not the
    backend itself: none of them needs lmms-eval installed."""
    code = ("import sys\n"
            "import videorope_train.eval.vniah, videorope_train.eval.vruler, videorope_train.eval.stack\n"
            "import videorope_train.eval.paper, videorope_train.eval.video\n"
            "print(sorted(m for m in sys.modules if m.startswith('lmms_eval') or m == 'videorope_train.eval.lmms'))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"
