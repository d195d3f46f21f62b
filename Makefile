# The two commands of the README's quick start, and the pieces they are made of.
# Each target installs what it needs first (scripts/bootstrap is idempotent and fast when done).

VENV ?= .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: run test lint typecheck pytest bootstrap clean

run: ## the daemon on the embedded default: simulated readers and cards, no system services
	scripts/bootstrap
	$(VENV)/bin/readerd run --simulate

test: ## the whole test suite: lint, types, and every test (pcscd and PostgreSQL ones included)
	scripts/bootstrap --test
	scripts/test

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck:
	$(VENV)/bin/mypy

pytest:
	$(VENV)/bin/python -m pytest

bootstrap:
	scripts/bootstrap --test

clean:
	rm -rf $(VENV) .readerd .mypy_cache .ruff_cache .pytest_cache .hypothesis
