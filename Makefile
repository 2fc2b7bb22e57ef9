# One command sets up and runs the demo (`make demo`); one runs the tests (`make test`).
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
TINY := work_dirs/tiny-qwen2vl
TINY3 := work_dirs/tiny-qwen3vl
export PATH := $(BIN):$(PATH)
export HF_HUB_OFFLINE := 1

# The support window's high end (hook/__init__.py SUPPORTED): LLaMA-Factory 0.9.5 caps transformers at 5.6.0, so
# only the in-process hook and RoPE tests run against the newest release, installed beside the pinned set (a
# directory put first on PYTHONPATH) instead of replacing it.
NEWEST_TRANSFORMERS := 5.8.0
NEWEST := $(abspath work_dirs/transformers-$(NEWEST_TRANSFORMERS))
HOOK_TESTS := tests/test_hook.py tests/test_generation.py tests/test_contracts.py tests/test_flash_attention.py \
	tests/test_rope_frequencies.py tests/test_rope_positions.py tests/test_rope_packing.py tests/test_fused_rotary.py

# The newest torch the project is tested on (the GPU check's machine carries it): its own venv, since torch cannot be
# layered over another torch; the in-process hook, RoPE, flash-attention and GPU-test-on-CPU tests run there.
NEWEST_TORCH := 2.11.0
NEWEST_TORCHVISION := 0.26.0
TORCH_VENV := $(abspath work_dirs/torch-$(NEWEST_TORCH))
TORCH_TESTS := $(HOOK_TESTS) tests/test_torch_flash_attn.py

.PHONY: setup demo demo-qwen3 test test-fast test-newest test-torch-newest device-wheels clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -r requirements.txt
	$(BIN)/pip install --no-deps -e .
	touch $@

demo: setup
	$(BIN)/videorope-train make-tiny-model $(TINY)
	$(BIN)/videorope-train prepare-model --base $(TINY) --rope videorope --temporal-stride 2 --video-budget --out $(TINY)-videorope
	$(BIN)/videorope-train make-demo-data data
	$(BIN)/llamafactory-cli train recipes/tiny_cpu_sft.yaml
	@echo "checkpoint: work_dirs/tiny_cpu_sft"

demo-qwen3: setup
	$(BIN)/videorope-train make-tiny-model $(TINY3) --family qwen3_vl
	$(BIN)/videorope-train prepare-model --base $(TINY3) --rope videorope --temporal-stride 2 --video-budget --out $(TINY3)-videorope
	$(BIN)/videorope-train make-demo-data data
	$(BIN)/llamafactory-cli train recipes/tiny_qwen3vl_cpu_sft.yaml
	@echo "checkpoint: work_dirs/tiny_qwen3vl_cpu_sft"

# Everything (what CI runs): the whole suite on two workers (pytest-xdist; one test file per worker at a time, so a
# module's shared runs stay in one process), the 20 slowest tests listed, then the newest transformers and torch.
test: setup
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=20
	$(MAKE) test-newest
	$(MAKE) test-torch-newest

# The development tier: no end-to-end launches (tests marked slow), a few minutes.
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow" --durations=10

test-newest: setup $(NEWEST)/.installed
	PYTHONPATH=$(NEWEST) $(BIN)/python -c 'import transformers as t; assert t.__version__ == "$(NEWEST_TRANSFORMERS)", t.__file__'
	PYTHONPATH=$(NEWEST) $(BIN)/python -m pytest -q -p no:cacheprovider $(HOOK_TESTS)

test-torch-newest: $(TORCH_VENV)/.installed
	$(TORCH_VENV)/bin/python -c 'import torch; assert torch.__version__.startswith("$(NEWEST_TORCH)"), torch.__version__'
	$(TORCH_VENV)/bin/python -m pytest -q -p no:cacheprovider $(TORCH_TESTS)
	PYTHONPATH=tests/site FLASH_ATTN_CPU=1 VIDEOROPE_GPU_TESTS_DEVICE=cpu \
		$(TORCH_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/test_gpu.py

$(TORCH_VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(TORCH_VENV)
	$(TORCH_VENV)/bin/pip install torch==$(NEWEST_TORCH) torchvision==$(NEWEST_TORCHVISION)
	$(TORCH_VENV)/bin/pip install $$(grep -E '^(transformers|tokenizers|accelerate|peft|trl|datasets|av|matplotlib|ijson|pytest|hypothesis)==' requirements.txt | sed 's/ *#.*//')
	$(TORCH_VENV)/bin/pip install --no-deps -e .
	touch $@

$(NEWEST)/.installed:
	$(BIN)/pip install --no-deps --target $(NEWEST) transformers==$(NEWEST_TRANSFORMERS)
	touch $@

# The wheels scripts/device_check.sh installs on a bare, offline GPU machine (docs/device_check.md): pinned with sha256
# in tools/device-wheels.lock, refused above 60 MiB; prints the command to run there.
device-wheels: setup
	$(BIN)/python scripts/device_wheels.py --dir .whl

clean:
	rm -rf work_dirs data/videorope_demo data/videorope_demo.json
