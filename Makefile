# Two commands: `make demo` (install, train, evaluate, sample) and `make test`
# (`make test-fast`: the unit tests only, for the development loop).
# Everything goes into a virtual environment in $(VENV). CPU machines get torch's
# CPU wheel; with a GPU, install the CUDA torch you want first and run with
# TORCH_SPEC="torch" (or point VENV at an environment that already has it).

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
# numpy 1 by default; NUMPY_SPEC="numpy>=2" gives numpy 2 (fairseq_awd/numpy_compat.py)
NUMPY_SPEC ?= numpy>=1.21.3,<2
BIN := $(VENV)/bin
# fairseq-fixed builds C++/Cython extensions from source: build them against the torch
# already installed (no isolated build env that would fetch a second, CUDA torch), without
# debug symbols. One extension at a time: torch's ninja backend writes each extension's
# build.ninja to the same build directory, so setuptools' parallel build_ext races on it.
BUILD_ENV := CFLAGS=-g0

.PHONY: install demo test test-fast test-faults lint clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.py pyproject.toml fairseq_awd/csrc/forget_mult_cpu.cpp fairseq_awd/csrc/drop_connect_cpu.cpp
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)" "$(NUMPY_SPEC)" cython "setuptools>=64" wheel
	$(BUILD_ENV) $(BIN)/python -m pip install --quiet --no-build-isolation --no-cache-dir -e ".[dev,cuda-check]"
	touch $@

demo: install
	PATH=$(CURDIR)/$(BIN):$$PATH bash scripts/demo.sh

lint: install
	$(BIN)/ruff check fairseq_awd scripts tests

# One worker per core (pytest-xdist), one thread each (tests/conftest.py). Each file stays
# on one worker, so that the models its module-scoped fixtures train are trained once.
PYTEST := $(BIN)/python -m pytest -q -n auto --dist loadfile

test: lint
	$(PYTEST) -m "not faults" tests

test-fast: lint
	$(PYTEST) -m "not e2e and not faults" tests

# The fault-injection loops: 50 SIGKILLs at random moments of a training that saves after
# every update, each followed by a check of every checkpoint and a resume (minutes).
test-faults: install
	$(BIN)/python -m pytest -q -s -m faults tests/test_checkpoint_faults.py

clean:
	rm -rf $(VENV) build *.egg-info demo-output
