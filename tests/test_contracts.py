"""Contract tests: every stock transformers function or method the hook copies, wraps or overrides is pinned per
supported release (signature + hash of its source, tests/contracts/transformers-<version>.json).  A transformers
upgrade that changes one fails the test named after it, instead of silently drifting from the copied code."""

import json
from pathlib import Path

import pytest
import transformers

from videorope_train.hook.contracts import STOCK, fingerprints

PINNED = Path(__file__).parent / "contracts" / f"transformers-{transformers.__version__}.json"
NAMES = [f"{module}:{name}" for module, names in STOCK.items() for name in names]


@pytest.fixture(scope="module")
def current():
    return fingerprints()


def test_this_release_is_pinned():
    assert PINNED.is_file(), (
        f"transformers {transformers.__version__} has no pinned contract: read the stock code listed in "
        f"videorope_train/hook/contracts.py for this release, adapt the hook, then pin it with "
        f"`python -m videorope_train.hook.contracts > tests/contracts/{PINNED.name}`"
    )
    assert sorted(json.loads(PINNED.read_text())) == sorted(NAMES), "the pinned file lists other functions"


@pytest.mark.parametrize("name", NAMES)
def test_stock_code_is_the_pinned_one(name, current):
    if not PINNED.is_file():
        pytest.fail(f"no pinned contract for transformers {transformers.__version__}")
    pinned = json.loads(PINNED.read_text())[name]
    assert current[name]["signature"] == pinned["signature"], f"{name}: signature changed in transformers " \
                                                              f"{transformers.__version__}"
    assert current[name]["source_sha256"] == pinned["source_sha256"], (
        f"{name}: source changed in transformers {transformers.__version__}; the hook copies or overrides it "
        f"(see videorope_train/hook/contracts.py): check it, adapt the hook, re-pin")


def test_the_support_window_is_pinned_end_to_end():
    """Every pinned release lies inside the import gate's window; its low end and the release CI tests as the high
    end (`make test-newest`) are both pinned, the high end being the newest."""
    import re

    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    from videorope_train.hook import SUPPORTED

    window = SpecifierSet(SUPPORTED["transformers"])
    low = min(Version(spec.version) for spec in window if spec.operator == ">=")
    pinned = sorted(Version(path.stem.split("-", 1)[1]) for path in PINNED.parent.glob("transformers-*.json"))
    newest = Version(re.search(r"^NEWEST_TRANSFORMERS := (\S+)$", (PINNED.parents[2] / "Makefile").read_text(),
                               re.M).group(1))
    assert pinned[0] == low and pinned[-1] == newest, pinned
    assert all(window.contains(version) for version in pinned), pinned
    assert not window.contains(Version(f"{newest.major}.{newest.minor}.{newest.micro + 1}"))  # the high end
