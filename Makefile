# The two commands of README.md: `make demo` (set-up + the main job) and
# `make test` (set-up + the test suite). Both are safe to rerun: set-up is
# redone only when what it builds from changes (sources, requirements, the
# build's environment variables), so a rerun after no change starts at once.
PYTHON ?= python3
PIP = $(PYTHON) -m pip

# The extension module set-up builds, and a record of the build's settings.
EXT_SUFFIX := $(shell $(PYTHON) -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
NATIVE_MODULE = ncx/_C$(EXT_SUFFIX)
BUILD_SETTINGS = build/ncx-build-settings
SOURCES := $(shell find csrc -type f) setup.py pyproject.toml

.PHONY: setup demo test bench FORCE

setup: $(NATIVE_MODULE)

# Rewritten only when a setting differs, so that its date says when one last changed.
$(BUILD_SETTINGS): FORCE
	@mkdir -p build
	@echo "NCX_CUDA=$(NCX_CUDA) TORCH_CUDA_ARCH_LIST=$(TORCH_CUDA_ARCH_LIST) $(PYTHON)" \
		| cmp -s - $@ || echo "NCX_CUDA=$(NCX_CUDA) TORCH_CUDA_ARCH_LIST=$(TORCH_CUDA_ARCH_LIST) $(PYTHON)" > $@

# --no-build-isolation: compile against the torch installed by requirements.txt
# (an isolated build env would download a second torch).
$(NATIVE_MODULE): requirements.txt $(SOURCES) $(BUILD_SETTINGS)
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-build-isolation --no-deps -e .
	@touch $@

demo: setup
	$(PYTHON) -m ncx.cli demo

test: setup
	$(PYTHON) -m pytest -q tests

bench: setup
	$(PIP) install -q constriction torchac
	$(PYTHON) -m pytest -q bench --benchmark-only
	$(PYTHON) bench/peers.py
