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
