# rlhfkit — `make demo` and `make test` are the two commands a new user needs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of PyTorch; a bare `torch` requirement can pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup setup-test test demo clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# rlhfkit itself (all `make demo` needs), then the test extras on top (`make test`).
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e . "$(TORCH_SPEC)"
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/python -m pip install -q -e ".[test]" "$(TORCH_SPEC)"
	touch $@

setup: $(VENV)/.installed

setup-test: $(VENV)/.installed-test

test: setup-test
	$(BIN)/python -m pytest -q tests

demo: setup
	$(BIN)/rlhfkit demo --output_dir runs/demo

clean:
	rm -rf $(VENV) runs
