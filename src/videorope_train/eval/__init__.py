"""Long-video retrieval evaluation: V-NIAH / V-NIAH-D on embeddings spliced into the language model.

* ``videorope_train.eval.data`` — needle sets (LongVA / VideoRoPE / Hugging Face layouts), haystack frame
  sampling with PyAV;
* ``videorope_train.eval.vniah`` — the harness (``run_vniah``) and its pure parts (cell grid, needle and
  distractor placement, teacher-forced exact match);
* ``videorope_train.eval.synthetic`` — a small synthetic haystack + needle set (tests, smoke runs);
* ``videorope_train.eval.plot`` — heatmaps, one run or several side by side;
* ``videorope_train.eval.cli`` — the ``videorope-train eval ...`` and ``make-vniah-data`` commands.

Importing this package is cheap (no torch); the submodules import what they need.
"""
