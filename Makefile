# The two entry points of the README. Both create/refresh .venv first (scripts/setup_env.sh).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: env demo test

env:
	VENV=$(VENV) bash scripts/setup_env.sh

demo: env
	$(PY) -m openrlhf_das.cli.demo

test: env
	$(PY) -m pytest -q tests
