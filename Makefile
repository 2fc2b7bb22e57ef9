# One command sets up and runs the demo (`make demo`); one runs the tests (`make test`).
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
TINY := work_dirs/tiny-qwen2vl
export PATH := $(BIN):$(PATH)
export HF_HUB_OFFLINE := 1

.PHONY: setup demo test clean

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

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf work_dirs data/videorope_demo data/videorope_demo.json
