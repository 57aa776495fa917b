# Two commands: `make demo` (install, train, evaluate, sample) and `make test`.
# Everything goes into a virtual environment in $(VENV). CPU machines get torch's
# CPU wheel; with a GPU, install the CUDA torch you want first and run with
# TORCH_SPEC="torch" (or point VENV at an environment that already has it).

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
# fairseq-fixed builds C++/Cython extensions from source: build them against the torch
# already installed (no isolated build env that would fetch a second, CUDA torch),
# two at a time and without debug symbols, which keeps the install under 3 minutes.
BUILD_ENV := CFLAGS=-g0 DIST_EXTRA_CONFIG=$(CURDIR)/build-parallel.cfg

.PHONY: install demo test lint clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.py pyproject.toml build-parallel.cfg fairseq_awd/csrc/forget_mult_cpu.cpp
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)" "numpy>=1.21.3,<2" cython "setuptools>=64" wheel
	$(BUILD_ENV) $(BIN)/python -m pip install --quiet --no-build-isolation -e ".[dev]"
	touch $@

demo: install
	PATH=$(CURDIR)/$(BIN):$$PATH bash scripts/demo.sh

lint: install
	$(BIN)/ruff check fairseq_awd scripts tests

test: lint
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) build *.egg-info demo-output
