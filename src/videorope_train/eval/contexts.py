"""The papers' evaluation contexts, in tokens: ``context=`` of the lmms-eval backend and the columns of ``eval paper``.

Apart from ``lmms.py`` because importing that module imports lmms-eval (its model class derives from lmms-eval's).
"""

CONTEXTS = {"8k": 8192, "16k": 16384, "32k": 32768, "64k": 64000}
