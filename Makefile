# Quick start: `make predict` predicts expression on a real HER2ST section, `make demo` runs the
# synthetic demo, `make test` runs the whole test suite.
# All create .venv on first use and install what they need (torch first, so pip takes the
# local CPU build instead of a multi-GB CUDA one).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.bitro-installed

.PHONY: demo predict test lint docs clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch>=2.5,<2.14"
	$(BIN)/python -m pip install --quiet -e ".[test,doc,cellpose]"
	touch $@

demo: $(STAMP)
	$(BIN)/bitro demo --out bitro_demo

predict: $(STAMP)
	$(BIN)/bitro predict-her2st tests/data/her2st --section C3 --out bitro_her2st

test: $(STAMP)
	MPLBACKEND=agg $(BIN)/python -m pytest -n 2

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts docs
	$(BIN)/ruff format --check src tests benchmarks scripts docs

docs: $(STAMP)
	$(BIN)/sphinx-build -W --keep-going -b html docs docs/_build/html

clean:
	rm -rf $(VENV) docs/_build docs/generated bitro_demo bitro_her2st
