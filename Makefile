# Set-up is part of every target: on a fresh machine with Python 3.11+,
# `make demo` or `make test` creates .venv, installs evtwin and runs.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: demo test bench lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/evtwin run scenarios/demo.toml

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python -m pytest tests/bench_*.py --benchmark-only --benchmark-columns=mean,stddev,rounds -s

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy sim agents csms grid

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .benchmarks
