# rlhfkit — `make demo` and `make test` are the two commands a new user needs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of PyTorch; a bare `torch` requirement can pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup test demo clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[test]" "$(TORCH_SPEC)"
	touch $@

setup: $(VENV)/.installed

test: setup
	$(BIN)/python -m pytest -q tests

demo: setup
	$(BIN)/rlhfkit demo --output_dir runs/demo

clean:
	rm -rf $(VENV) runs
