# Two commands are all a new machine needs (Python >= 3.11 and pip):
#   make run    sets up .venv and trains the baseline
#   make test   sets up .venv and runs the formatter, the linter and the tests
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= configs/baseline.py
# The bench extra adds the PyTorch peer (torch 2.13.0, a CPU build on these
# machines), whose parity with scfail's model the tests check; without it
# (EXTRAS=test) those tests are skipped.
EXTRAS ?= test,bench

.PHONY: run study test lint clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

run: $(BIN)/.installed
	$(BIN)/python -m scfail.main --config=$(CONFIG)

study: $(BIN)/.installed
	$(BIN)/python -m scfail.main --config=configs/ablate.py

lint: $(BIN)/.installed
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest -n 2 tests

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
