# fedfleet — `make demo` installs and runs the demo; `make test` installs and runs the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.fedfleet-installed
TFLITE_STAMP := $(VENV)/.fedfleet-tflite-installed
PACKAGES := tasks coordinator edge_client strategies privacy fleet simulation firmware_images fedfleet

.PHONY: install install-tflite demo test lint typecheck pytest clean

# torch first, pinned: any other version (or an unpinned torch) pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --progress-bar on "torch==2.13.0"
	$(BIN)/python -m pip install --progress-bar on -e ".[server,site,dev,litert,energy]"
	touch $(STAMP)

# TFLite conversion (coordinator side, ~0.95 GB), installed without dependency resolution:
# a resolved install downgrades typing-extensions and breaks pydantic (see the file's header).
$(TFLITE_STAMP): $(STAMP) firmware_images/tflite-requirements.txt
	$(BIN)/python -m pip install --progress-bar on --no-deps -r firmware_images/tflite-requirements.txt
	touch $(TFLITE_STAMP)

install: $(STAMP)

install-tflite: $(TFLITE_STAMP)

demo: install
	FLWR_TELEMETRY_ENABLED=0 $(BIN)/fedfleet simulate --config examples/demo.toml

lint: install
	$(BIN)/ruff check $(PACKAGES) tests bench
	$(BIN)/ruff format --check $(PACKAGES) tests bench

typecheck: install
	$(BIN)/mypy

# One torch thread per process: tests run SuperLinks, SuperNodes and agents side by side on
# 2 cores, where oversubscribed torch threads train up to 10x slower.
pytest: install-tflite
	FLWR_TELEMETRY_ENABLED=0 FEDFLEET_REQUIRE_TFLITE=1 OMP_NUM_THREADS=1 \
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest --durations=25

test: lint typecheck pytest

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
