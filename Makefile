# fedfleet — `make demo` installs and runs the demo; `make test` installs and runs the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.fedfleet-installed
PACKAGES := tasks coordinator edge_client strategies privacy fleet simulation firmware_images fedfleet

.PHONY: install demo test lint typecheck pytest clean

# torch first, pinned: any other version (or an unpinned torch) pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --progress-bar on "torch==2.13.0"
	$(BIN)/python -m pip install --progress-bar on -e ".[server,dev,litert]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	FLWR_TELEMETRY_ENABLED=0 $(BIN)/fedfleet simulate --config examples/demo.toml

lint: install
	$(BIN)/ruff check $(PACKAGES) tests bench
	$(BIN)/ruff format --check $(PACKAGES) tests bench

typecheck: install
	$(BIN)/mypy

pytest: install
	FLWR_TELEMETRY_ENABLED=0 PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest --durations=15

test: lint typecheck pytest

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
