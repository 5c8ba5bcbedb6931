# rlhfkit — `make demo` and `make test` are the two commands a new user needs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of PyTorch; a bare `torch` requirement can pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
# Bytecode is compiled on first import instead of for every file at install time (uv's default
# too): pip spends most of its CPU time on that for torch alone.
PIP_INSTALL := $(BIN)/python -m pip install -q --no-compile

.PHONY: setup setup-test test demo clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# rlhfkit itself (all `make demo` needs), then the test extras on top (`make test`).
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(PIP_INSTALL) "$(TORCH_SPEC)"
	$(PIP_INSTALL) -e . "$(TORCH_SPEC)"
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP_INSTALL) -e ".[test]" "$(TORCH_SPEC)"
	touch $@

setup: $(VENV)/.installed

setup-test: $(VENV)/.installed-test

test: setup-test
	$(BIN)/python -m pytest -q tests

demo: setup
	$(BIN)/rlhfkit demo --output_dir runs/demo

clean:
	rm -rf $(VENV) runs
