# MAIL_API — developer entry points. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_CONFIG := etc/dev/mail-api.toml

.DEFAULT_GOAL := help

.PHONY: help install run test test-unit lint typecheck imports check bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

install: $(STAMP) ## create .venv with the project and its test tools (pinned)

run: $(STAMP) ## migrate ./var and run receiver, worker and panel on the development config
	scripts/run-dev.sh $(DEV_CONFIG)

TEST_PACKAGES := chromium dovecot-imapd dovecot-pop3d nginx postfix systemd faketime python3-venv

test: $(STAMP) ## install and run the whole test suite (installs Chromium and Dovecot)
	scripts/ensure-apt.sh $(TEST_PACKAGES)
	$(BIN)/python -m pytest tests

test-unit: $(STAMP) ## only the fast unit tests
	$(BIN)/python -m pytest tests/unit -q

lint: $(STAMP) ## ruff
	$(BIN)/ruff check mailapi receiver worker panel migrations tests bench

typecheck: $(STAMP) ## mypy --strict
	$(BIN)/mypy

imports: $(STAMP) ## the process packages never import each other
	$(BIN)/lint-imports

check: lint typecheck imports ## lint, types and import contracts

bench: $(STAMP) ## benchmarks side by side with their baselines (installs postfix for smtp-sink)
	scripts/ensure-apt.sh postfix wrk
	$(BIN)/python -m bench

.PHONY: soak

SOAK_SECONDS ?= 600
SOAK_RATE ?= 50

soak: $(STAMP) ## 10-minute signed-webhook load with the panel polling; prints RSS/fd/WAL figures
	SOAK_SECONDS=$(SOAK_SECONDS) SOAK_RATE=$(SOAK_RATE) $(BIN)/python -m pytest \
		tests/reliability/test_load.py -k sustained -s

.PHONY: install-system uninstall-system

install-system: ## as root: install into /opt/mail_api with units and nginx site (INSTALL_ARGS=...)
	scripts/install-system.sh --source $(CURDIR) $(INSTALL_ARGS)

uninstall-system: ## as root: remove the system install, keep the data (PURGE=1 deletes it too)
	scripts/uninstall-system.sh $(if $(PURGE),--purge)

clean: ## remove the virtualenv and local state
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
