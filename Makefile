VENV ?= .venv
PY := $(VENV)/bin/python
RATCHET := $(VENV)/bin/ratchet
STAMP := $(VENV)/.ratchet-installed
export HF_HUB_OFFLINE := 1
export NEMO_GUARDRAILS_NO_USAGE_STATS := 1

.PHONY: run test test-heavy bench setup lint

# Re-installs only when the dependency list or the installer changed.
$(STAMP): pyproject.toml scripts/install.sh
	bash scripts/install.sh $(VENV)
	touch $(STAMP)

setup: $(STAMP)
	bash scripts/install-browser.sh
	$(RATCHET) model prepare
	$(RATCHET) db upgrade
	@# Fits the jailbreak classifier into the data dir once, so the first `make run` starts without that wait.
	$(RATCHET) rails check

run: setup
	@echo "admin token: $$($(RATCHET) users bootstrap-admin)"
	$(RATCHET) serve

test: setup
	$(PY) -m pytest -ra

# Tests too slow for every run on a 2-core CPU box (pyproject.toml's `heavy` marker).
test-heavy: setup
	$(PY) -m pytest -ra -m heavy

bench: setup
	$(PY) bench/serving.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
