# The two commands that matter: `make demo` and `make test`. Both build .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# clipadapt and what it needs (all `make demo` installs), then the dev extra (tests, linters, ray, ...: 40 s more)
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test test-fast lint bench clean

setup: $(DEV_STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --quiet -c constraints.txt -e .
	touch $(STAMP)

$(DEV_STAMP): $(STAMP)
	$(PIP) install --quiet -c constraints.txt -e ".[dev]"
	touch $(DEV_STAMP)

demo: $(STAMP)
	$(VENV)/bin/clipadapt demo

test: $(DEV_STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

test-fast: $(DEV_STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/mypy --follow-imports=silent --ignore-missing-imports src/clipadapt/api
	$(VENV)/bin/ruff format --check src tests benchmarks

bench: $(DEV_STAMP)
	$(PY) benchmarks/bench_zeroshot.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
