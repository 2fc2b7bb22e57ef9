"""Evaluation: V-NIAH / V-NIAH-D and V-RULER on spliced embeddings, lmms-eval benchmarks, the papers' numbers.

* ``model`` — loading a checkpoint through its own remote code (``load_model``, ``LoadedModel``);
* ``embeddings`` — vision-tower embeddings of frames and images, cached on disk;
* ``spliced`` — prompts around a video block, batches with the checkpoint's positions, (chunked) forward,
  teacher-forced exact match;
* ``results`` — resumable result files: cells, summaries, heatmaps;
* ``vniah`` — V-NIAH / V-NIAH-D (grid, needle and distractor placement, ``run_vniah``);
* ``vruler`` — V-RULER's mkmv, counting, ordering and vniah-d subtasks (``run_vruler``);
* ``video`` — the video path every harness shares: the authors' sampling policy (contexts 8k ... 64k), probing,
  decoding, read-ahead, haystacks;
* ``lmms`` — the lmms-eval model ``videorope`` (``lmms_entry`` registers it); ``lmms_example`` — a tiny task to try
  it on (``lmms_tiny_task/``, copied out by ``make-lmms-example``);
* ``paper`` — checkpoints' scores next to the papers' (``eval paper``);
* ``data``, ``synthetic`` — needle sets, synthetic sets; ``plot``, ``compare`` — heatmaps, sweeps;
* ``cli`` — ``videorope-train eval ...``, ``make-vniah-data``, ``make-vruler-data``, ``make-lmms-example``.

Importing this package is cheap (no torch); the submodules import what they need.
"""
