# Attune's two commands:
#   make run    set up what is missing, fetch the default models, build, serve on 127.0.0.1:8080
#   make test   set up what is missing, then every test: Rust (host), frontend components and e2e in chromium
# Both install tools once per machine and redo nothing that is already done.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

ADDR ?= 127.0.0.1:8080
DATA_DIR ?= ./data
MODELS_DIR ?= ./models
TARGET_DIR := $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)
# Trunk finds wasm-opt (npm's binaryen) here; cargo-installed tools in ~/.cargo/bin.
export PATH := $(CURDIR)/node_modules/.bin:$(HOME)/.cargo/bin:$(PATH)

FRONTEND_SOURCES := $(shell find frontend shared style -type f -not -path '*/target/*') Cargo.toml Cargo.lock Trunk.toml

.PHONY: help run test cuda mkl setup setup-test models frontend backend-release test-rust test-frontend test-e2e fmt lint clean

help:
	@echo "make run   - install what is missing, fetch models, build, serve on http://$(ADDR)"
	@echo "make test  - install what is missing, run Rust tests and browser (e2e) tests"
	@echo "make lint  - clippy on every crate"
	@echo "make cuda  - build attune with the CUDA backend into build/cuda/attune (toolkit from PyPI wheels; no GPU needed)"
	@echo "make mkl   - build attune with Intel MKL for the CPU matmul into build/mkl/attune (static libraries from PyPI wheels)"

setup:
	@./scripts/setup-tools.sh

setup-test:
	@./scripts/setup-tools.sh --browser

models:
	@MODELS_DIR=$(MODELS_DIR) ./scripts/fetch-models.sh

# The web app, release build, rebuilt only when its sources change.
frontend: dist/index.html
dist/index.html: $(FRONTEND_SOURCES) | setup
	trunk build --release

backend-release: setup
	cargo build --release -p attune-backend --bin attune

run: setup models frontend backend-release
	$(TARGET_DIR)/release/attune serve --addr $(ADDR) --data-dir $(DATA_DIR) --models-dir $(MODELS_DIR) --dist-dir dist

test: setup-test models
	cargo fmt --all --check
	$(MAKE) --no-print-directory test-rust
	$(MAKE) --no-print-directory test-frontend
	$(MAKE) --no-print-directory test-e2e

# Host-target tests of every crate, the frontend's included. The e2e server is the binary
# these tests build (same profile), so nothing compiles twice.
test-rust:
	cargo test --workspace

# The frontend's components in headless chromium (wasm-bindgen-test-runner drives chromedriver).
test-frontend:
	CHROMEDRIVER=/usr/bin/chromedriver WASM_BINDGEN_TEST_WEBDRIVER_JSON=$(CURDIR)/frontend/webdriver.json \
		cargo test -p attune-frontend --target wasm32-unknown-unknown --test browser

# `cargo test --workspace --no-run` builds target/debug/attune with exactly the features
# `cargo test` uses (a plain `cargo build -p attune-backend` would resolve features differently
# and compile every dependency again); after test-rust it is a no-op.
test-e2e: frontend target/openai-venv/.installed
	cargo test --workspace --no-run --quiet
	mkdir -p e2e/artifacts
	ATTUNE_BIN=$(TARGET_DIR)/debug/attune ATTUNE_DIST=$(CURDIR)/dist ATTUNE_MODELS=$(abspath $(MODELS_DIR)) \
		node --test --test-concurrency=1 e2e/

# The official `openai` Python client, which e2e/openai_client.test.mjs drives /v1 with (from PyPI).
target/openai-venv/.installed: e2e/openai-requirements.txt
	python3 -m venv target/openai-venv
	target/openai-venv/bin/pip install --quiet --disable-pip-version-check -r e2e/openai-requirements.txt
	touch $@

# The CUDA build: CUDA 13.0 from pinned PyPI wheels, a generated link stub for the driver library,
# kernels for CUDA_COMPUTE_CAP (default 90: H100/H200). Its own target directory, so the CPU build's
# cache stays valid. Never part of `make test`. The binary runs on the GPU machine through
# scripts/gpu-check.sh, which points it at that machine's CUDA 13 libraries.
CUDA_TARGET_DIR ?= $(CURDIR)/target/cuda
cuda:
	cargo fetch --quiet
	eval "$$(./scripts/cuda-toolchain.sh)" && \
		CARGO_TARGET_DIR=$(CUDA_TARGET_DIR) cargo build --release -p attune-backend --bin attune --features cuda
	mkdir -p build/cuda
	strip -o build/cuda/attune $(CUDA_TARGET_DIR)/release/attune
	@ls -l build/cuda/attune

# An opt-in CPU build on Intel MKL (candle's `mkl` feature), its static libraries from PyPI wheels.
MKL_TARGET_DIR ?= $(CURDIR)/target/mkl-build
mkl:
	cargo fetch --quiet
	eval "$$(./scripts/mkl-libraries.sh)" && \
		CARGO_TARGET_DIR=$(MKL_TARGET_DIR) cargo build --release -p attune-backend --bin attune --features mkl
	mkdir -p build/mkl
	strip -o build/mkl/attune $(MKL_TARGET_DIR)/release/attune
	@ls -l build/mkl/attune

fmt:
	cargo fmt --all

lint:
	cargo clippy --workspace --all-targets -- -D warnings

clean:
	rm -rf dist e2e/artifacts
	cargo clean
