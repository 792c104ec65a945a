# The two commands of README.md: `make demo` (set-up + the main job) and
# `make test` (set-up + the test suite). Both are safe to rerun.
PYTHON ?= python3
PIP = $(PYTHON) -m pip

.PHONY: setup demo test bench

# --no-build-isolation: compile against the torch installed by requirements.txt
# (an isolated build env would download a second torch).
setup:
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-build-isolation --no-deps -e .

demo: setup
	$(PYTHON) -m ncx.cli demo

test: setup
	$(PYTHON) -m pytest -q tests

bench: setup
	$(PIP) install -q constriction torchac
	$(PYTHON) -m pytest -q bench --benchmark-only
	$(PYTHON) bench/peers.py
