# Two entry points for a fresh machine: `make demo` (the offline demo) and `make test`
# (the whole suite). Both create .venv and install the project into it first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# A local wheel folder (e.g. a CPU-only torch) is used when present; PyPI otherwise.
WHEELS := $(wildcard /opt/wheels)
PIP_ENV := $(if $(WHEELS),PIP_FIND_LINKS=$(WHEELS),)

$(BIN)/.installed-offline: pyproject.toml
	$(PY) -m venv $(VENV)
	$(PIP_ENV) $(BIN)/pip install -q -e '.[test]'
	touch $@

# A CPU-only torch wheel in the local wheel folder is installed first, so that the live
# extra's torch requirement is already met and pip does not fetch a CUDA build.
TORCH_WHEEL := $(firstword $(wildcard /opt/wheels/torch-*.whl))

$(BIN)/.installed-live: $(BIN)/.installed-offline
	$(if $(TORCH_WHEEL),$(PIP_ENV) $(BIN)/pip install -q $(TORCH_WHEEL),)
	$(PIP_ENV) $(BIN)/pip install -q -e '.[live,test]'
	# the authors' reference package, for conformance tests only; its pins are not ours
	$(PIP_ENV) $(BIN)/pip install -q --no-deps dflash==0.1.0
	touch $@

.PHONY: demo test test-offline
demo: $(BIN)/.installed-offline
	$(BIN)/specreplay demo

test: $(BIN)/.installed-live
	$(BIN)/python -m pytest -q

test-offline: $(BIN)/.installed-offline
	$(BIN)/python -m pytest -q -m "not live"
