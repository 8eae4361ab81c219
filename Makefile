# Every target CI runs is here; `make test` is what .ci/run calls.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= config.yaml
PYTEST_ARGS ?=

.PHONY: install run lint test docs bench bench-startup soak fuzz chaos clean

# Reinstalls when the dependencies or their pins change.
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/dropflow run --config $(CONFIG)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint docs
	$(BIN)/pytest $(PYTEST_ARGS)

# The documentation site (mkdocs.yml, docs/), built into build/site; a broken link fails it.
docs: install
	$(BIN)/mkdocs build --strict

bench: install
	$(BIN)/python -m bench
	$(BIN)/python -m bench.startup
	$(BIN)/python -m bench.flows
	$(BIN)/python -m bench.deployment
	$(BIN)/python -m bench.in_process
	$(BIN)/python -m bench.routes
	$(BIN)/python -m bench.vitals
	$(BIN)/python -m bench.status

# The start-up half of `make bench` alone (its section of bench/RESULTS.md).
bench-startup: install
	$(BIN)/python -m bench.startup

# A long run of the embedded default at a steady rate, with retention set short (not in `make
# test`): bench/soak.csv, bench/soak.png and the soak section of bench/RESULTS.md.
MINUTES ?= 60
RATE ?= 5
soak: install
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test,bench]'
	$(BIN)/python -m bench.soak --minutes $(MINUTES) --rate $(RATE)

fuzz: install
	$(BIN)/python -m tests.fuzz

# ARGS picks a mode: --runner deployment, --standby, --archive-elsewhere, --kill-server
# (tests/chaos.py says what each does), and --kills, --jobs, --seed.
chaos: install
	$(BIN)/python -m tests.chaos $(ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
