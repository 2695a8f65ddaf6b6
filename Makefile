# spendgate: the two commands are `make run` and `make test` (see README.md).
SHELL := /bin/bash
# Azure Functions runs spendgate on Python 3.13 (the worker is the azure-functions-runtime library pinned in
# requirements.txt), so the venvs use 3.13 too: python3.13 on PATH, else pyenv's 3.13.
PY ?= $(shell for c in python3.13 "$$(pyenv root 2>/dev/null)"/versions/3.13*/bin/python3.13; do \
	"$$c" -c 'import sys; assert sys.version_info[:2] == (3, 13)' >/dev/null 2>&1 && { echo "$$c"; break; }; done)
NEED_PY := spendgate needs Python 3.13 (python3.13 on PATH or under pyenv); none was found: install it, or make PY=/path/to/python3.13
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
RUN_ARGS ?=   # e.g. make run RUN_ARGS="--port 7072"

.PHONY: setup run test lint demo bench bench-storage bench-ledger bench-scaleout bench-proxy bench-billing clean

# The venv is rebuilt when it is not 3.13 (an older checkout's 3.11 venv, say).
$(VENV)/.python-3.13:
	@test -n "$(PY)" || { echo "$(NEED_PY)" >&2; exit 1; }
	rm -rf $(VENV)
	$(PY) -m venv $(VENV)
	touch $@

$(BIN)/python: $(VENV)/.python-3.13

# Re-install only when the requirement files change.
$(VENV)/.installed: requirements.txt requirements-dev.txt $(VENV)/.python-3.13
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

setup: $(VENV)/.installed node_modules/.installed

run: setup
	$(BIN)/python -m scripts.run_local $(RUN_ARGS)

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) node_modules .local .pytest_cache .ruff_cache

# --- infra (issue 6): checkov in its own venv, and the deploy smoke test --------------------------
TOOLS_VENV := .venv-tools
SMOKE_URL ?= http://localhost:7071
SMOKE_FUNCTION_KEY ?= local-dev-function-key

.PHONY: tools smoke

$(TOOLS_VENV)/.installed: requirements-tools.txt
	@test -n "$(PY)" || { echo "$(NEED_PY)" >&2; exit 1; }
	rm -rf $(TOOLS_VENV)
	$(PY) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/pip install --quiet --upgrade pip
	$(TOOLS_VENV)/bin/pip install --quiet -r requirements-tools.txt
	touch $@

tools: $(TOOLS_VENV)/.installed
setup: $(TOOLS_VENV)/.installed

# Against `make run` by default; for Azure: make smoke SMOKE_URL=https://… SMOKE_FUNCTION_KEY=…
smoke:
	scripts/smoke.sh $(SMOKE_URL) $(SMOKE_FUNCTION_KEY)

.PHONY: clean-tools
clean-tools:
	rm -rf $(TOOLS_VENV)
clean: clean-tools

# Bill the seeded local customers through a billing run (needs `make run` in another shell).
DEMO_ARGS ?=
demo: setup
	$(BIN)/python -m scripts.demo $(DEMO_ARGS)

# --- console (issue 8): Debian chromium for the browser tests (playwright install can't work here)
.PHONY: browser-deps
browser-deps:
	bash scripts/install_chromium.sh
setup: browser-deps

# --- benchmarks (issue 7): each script starts its own services and prints its figures -----------
bench-storage: setup
	$(BIN)/python -m bench.storage_client

bench-ledger: setup
	$(BIN)/python -m bench.ledger

bench-scaleout: setup
	$(BIN)/python -m bench.scaleout

bench-proxy: setup
	$(BIN)/python -m bench.proxy

bench-billing: setup
	$(BIN)/python -m bench.billing_run

bench: bench-storage bench-ledger bench-scaleout bench-proxy bench-billing
