# Two commands are all a new machine needs (Python >= 3.11 and pip):
#   make run    sets up .venv and trains the baseline
#   make test   sets up .venv and runs the formatter, the linter and the tests
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= configs/baseline.py

.PHONY: run study test lint clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
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
