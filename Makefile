# Set-up is part of every target: on a fresh machine with Python 3.11+,
# `make demo` or `make test` creates .venv, installs evtwin and runs.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: demo test test-fast bench soak lint clean readme-figures

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,simbench]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/evtwin run scenarios/demo.toml

test: $(STAMP)
	$(BIN)/python -m pytest

# Everything but the end-to-end runs marked slow: unit, protocol and model tests.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not soak"

# The README's quoted results and docs/figures/*.png, from the runs they quote
# (docs/readme_figures.py; --check to only compare, --only NAME,... for some).
readme-figures: $(STAMP)
	$(BIN)/python docs/readme_figures.py

bench: $(STAMP)
	$(BIN)/python -m pytest tests/bench_*.py --benchmark-only --benchmark-columns=mean,stddev,rounds -s

# Load, reconnect storm, kill -9 and fuzz against a real `evtwin csms serve` on
# 127.0.0.1; sizes from EVTWIN_SOAK_* (see tests/soak_csms.py).
soak: $(STAMP)
	$(BIN)/python -m pytest tests/soak_csms.py tests/test_csms_auth_hardening.py -m soak -s

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy sim agents csms grid ocppj transports

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .benchmarks
