# The newcomer's two commands, and CI's (.ci/run runs `make test`):
#
#   make run                                  # the default experiment: python run.py
#   make run ARGS="strategy=frozen epochs=1"  # any options and keys of run.py
#   make test                                 # lint, docs, then every test (what CI runs)
#
# Each creates .venv if missing and installs the project into it (pip install -e ".[test]") when
# pyproject.toml has changed since the last install: a second `make run` starts at once.
# Other targets: make lint, make docs, make docs-serve, make clean.

VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.tl-installed
ARGS ?=
# Two pytest-xdist workers: most of a test's time is a run.py process starting (imports on one core) or
# waiting for a server, so two tests at once fill two cores. Each process gets one torch thread
# (OMP_NUM_THREADS=1, inherited by the run.py processes the tests start): two trainings at once with two
# threads each on two cores took longer than one after the other. Tests that share a module fixture carry
# an xdist_group mark and run on one worker (--dist loadgroup). The slowest 20 tests are listed at the end.
PYTEST_ARGS ?= -n 2 --dist loadgroup --durations=20
# The docs plugins' banners about MkDocs 2, on every build: not ours to act on.
export NO_MKDOCS_2_WARNING := 1
export DISABLE_MKDOCS_2_WARNING := true

.NOTPARALLEL:  # `make test` runs its steps in the order listed, even under make -j
.PHONY: run test lint imports docs-check docs docs-serve system-packages pytest clean

run: $(INSTALLED)
	$(BIN)/python run.py $(ARGS)

test: $(INSTALLED) system-packages lint imports docs-check pytest

$(BIN)/python:
	python3 -m venv $(VENV)

$(INSTALLED): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e ".[test]"
	touch $@

# PostgreSQL and Chromium: the tests start the one (tests/servers.py) and drive the other (the browser
# test). Installed with apt-get where this machine has it and we are root; elsewhere one line says what
# is missing, and the tests that need it skip (outside CI) or fail (in CI).
system-packages:
	@missing=""; \
	ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || command -v pg_ctl >/dev/null || missing="postgresql"; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	missing=$${missing# }; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if command -v apt-get >/dev/null && [ "$$(id -u)" -eq 0 ]; then \
		echo "make test: installing $$missing (apt-get)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	else \
		echo "make test: missing system packages: $$missing (as root: apt-get install $$missing); the tests that need them skip, or fail in CI"; \
	fi

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The layers of tl/ import downwards only ([tool.importlinter] in pyproject.toml).
imports: $(INSTALLED)
	$(BIN)/lint-imports

# The documentation builds without a warning, into a folder of its own that is removed afterwards.
docs-check: $(INSTALLED)
	@site=$$(mktemp -d); echo "$(BIN)/mkdocs build --strict --site-dir $$site"; \
	$(BIN)/mkdocs build --strict --site-dir "$$site"; status=$$?; rm -rf "$$site"; exit $$status

docs: $(INSTALLED)  # into outputs/site/
	$(BIN)/mkdocs build --strict

docs-serve: $(INSTALLED)
	$(BIN)/mkdocs serve

# pytest exits 5 when it collected no test: a failure here, as any other.
pytest: $(INSTALLED)
	@echo "OMP_NUM_THREADS=1 $(BIN)/pytest $(PYTEST_ARGS)"; \
	status=0; OMP_NUM_THREADS=1 $(BIN)/pytest $(PYTEST_ARGS) || status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; \
	exit $$status

# Caches and builds; not .venv, nor your runs (mlflow.db, mlruns/, outputs/).
clean:
	rm -rf .pytest_cache .ruff_cache outputs/site *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +
