"""Test-only start-up for subprocesses (llamafactory-cli, torchrun ranks) started with tests/site on PYTHONPATH.

FLASH_ATTN_CPU=1              transformers accepts the flash_attn stand-in beside this file on CPU
VIDEOROPE_RECORD_POSITIONS=D  the positions the rotary consumes are saved under D (position_recorder.py)
"""

import os

if os.environ.get("FLASH_ATTN_CPU") == "1":
    import flash_attn_cpu_device

    flash_attn_cpu_device.install()

if os.environ.get("VIDEOROPE_RECORD_POSITIONS"):
    import position_recorder

    position_recorder.install(os.environ["VIDEOROPE_RECORD_POSITIONS"])

if os.environ.get("FLASH_ATTN_CPU_REPORT"):
    import atexit
    import json

    def _report(path=os.environ["FLASH_ATTN_CPU_REPORT"]):
        import sys

        module = sys.modules.get("flash_attn")
        if module is not None and hasattr(module, "CALLS"):
            with open(f"{path}.{os.getpid()}.json", "w") as handle:
                json.dump(module.CALLS, handle)

    atexit.register(_report)
