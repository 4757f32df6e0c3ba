# The README's two commands are `make demo` and `make test`; every target is safe to re-run.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
# Every install comes from the lock files (exact versions with hashes; `make lock` rewrites them).
# Stamps record which lock is installed, so re-runs are no-ops until a lock or pyproject.toml changes.
LOCKS := deploy/requirements
STAMP_ALL := $(VENV)/.installed-all
STAMP_RUNTIME := $(VENV)/.installed-runtime
STAMP_BUILD := $(VENV)/.installed-build
# `make lock` installs this uv into its own venv beside the project's.
UV_VERSION := 0.13.10
UV := $(VENV)/.lock-tool/bin/uv
PIP_LOCKED := $(PY) -m pip install --quiet --require-hashes
# The project itself: its dependencies and build backend are already installed from the locks.
PIP_SELF := $(PY) -m pip install --quiet --no-deps --no-build-isolation -e .

.PHONY: help install install-runtime lock services services-down services-status lint lint-deploy test test-unit demo chaos schema clean

help:
	@echo "make demo             set everything up and run the demo (services, model, events, verdicts)"
	@echo "make test             set everything up and run lint, mypy and the whole test suite"
	@echo "make install          venv at .venv with the runtime, export and dev extras (from the locks)"
	@echo "make lock             rewrite the locks in $(LOCKS)/ from pyproject.toml (UPGRADE=1: newest)"
	@echo "make services         start Kafka (KRaft) and Redis locally; services-down / services-status"
	@echo "make lint             ruff + mypy; make lint-deploy: helm, kubernetes schemas, promtool"
	@echo "make chaos            the full fault suite; rewrites docs/reliability.md"

$(PY):
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 needed"' \
	  || { echo "error: Python >= 3.11 is required (set PYTHON=/path/to/python3.11)" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

# pip, setuptools and wheel from the lock: the project is then built without build isolation.
$(STAMP_BUILD): $(LOCKS)/build.txt | $(PY)
	$(PIP_LOCKED) -r $(LOCKS)/build.txt
	touch $@

$(STAMP_ALL): $(LOCKS)/dev.txt pyproject.toml $(STAMP_BUILD)
	$(PIP_LOCKED) -r $(LOCKS)/dev.txt
	$(PIP_SELF)
	$(PY) -m pip check
	touch $@ $(STAMP_RUNTIME)

$(STAMP_RUNTIME): $(LOCKS)/runtime.txt pyproject.toml $(STAMP_BUILD)
	$(PIP_LOCKED) -r $(LOCKS)/runtime.txt
	$(PIP_SELF)
	$(PY) -m pip check
	touch $@

install: $(STAMP_ALL)

install-runtime: $(STAMP_RUNTIME)

$(UV): | $(PY)
	$(PY) -m venv $(VENV)/.lock-tool
	$(VENV)/.lock-tool/bin/python -m pip install --quiet "uv==$(UV_VERSION)"

# On purpose only: resolves pyproject.toml's ranges against today's package index.
lock: $(UV)
	UV=$(UV) PYTHON=$(PY) UPGRADE=$(UPGRADE) scripts/lock.sh

services:
	scripts/services.sh up

services-down:
	scripts/services.sh down

services-status:
	scripts/services.sh status

lint: install
	$(VENV)/bin/ruff check moderator tests scripts
	$(VENV)/bin/ruff format --check moderator tests scripts
	$(VENV)/bin/mypy

# Helm chart, Kubernetes manifests, Prometheus rules and the compose file, with real tools
# (helm built from the Go module proxy and promtool from Debian, both cached under ~/.cache).
lint-deploy: install
	PY=$(PY) scripts/lint-deploy.sh

# pytest exits 5 when it collects nothing: that is a broken suite here, never a pass.
test: install services lint lint-deploy
	$(PY) -m pytest -q -p no:cacheprovider; code=$$?; \
	  if [ $$code -eq 5 ]; then echo "error: pytest collected no tests" >&2; exit 1; fi; exit $$code

test-unit: install
	$(PY) -m pytest -q -m "not integration"

demo: install-runtime services
	$(PY) -m moderator demo

# The full fault suite (20k events, 5 scenarios, private broker and Redis on other ports);
# it rewrites docs/reliability.md. A bounded version runs in `make test`.
chaos: install
	$(PY) -m moderator.chaos --events 20000 --report docs/reliability.md

schema: install
	$(PY) -m moderator.policy.schema > policies/schema.json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
