# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

.PHONY: demo test test-fast lint
demo: $(VENV)/.installed
	$(PY) -m bertjax.train configs/demo.yaml

# Compiling is most of the tests' time and XLA compiles on one thread, so both tiers run in
# TEST_WORKERS processes (pytest-xdist); the CLI runs they start share one compilation cache
# (tests/conftest.py), and each pytest process compiles a repeated program once
# (tests/compile_memo.py).
# `make test` runs every test and compiles as users' runs do. A worker that dies (a native crash)
# is not replaced: with the file-grouping scheduler of tests/conftest.py, pytest-xdist 3.8 would
# deadlock after a replacement (pytest-xdist issues 1323, 1378); the run ends instead, the test
# the worker died in failed and that worker's remaining tests not run.
TEST_WORKERS ?= 2
PYTEST_XDIST := -n $(TEST_WORKERS) --max-worker-restart=0
test: $(VENV)/.installed
	$(PY) -m pytest -q $(PYTEST_XDIST)

# The quick tier: no CLI subprocesses or end-to-end runs (those are marked slow), compiled with
# XLA's CPU backend at -O0 (about half the compile time): the same programs, whose sums may
# differ in the last bits; no quick test compares with a number recorded under the default flags.
test-fast: $(VENV)/.installed
	XLA_FLAGS="--xla_backend_optimization_level=0 $$XLA_FLAGS" \
		$(PY) -m pytest -q -m "not slow" $(PYTEST_XDIST)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check bertjax tests bench

# Benchmarks compare against Hugging Face PyTorch: torch lives only in this environment.
.venv-bench/.installed: pyproject.toml
	python3 -m venv .venv-bench
	.venv-bench/bin/python -m pip install -q --upgrade pip
	.venv-bench/bin/python -m pip install -q -e . torch==2.13.0 transformers
	touch $@

.PHONY: bench-env
bench-env: .venv-bench/.installed

# The pretraining step compiled for an H100 on this machine, no GPU needed: what it launches and
# the bytes it moves (bench/gpu_aot.py). jax's CUDA plugin (~5.5 GB) lives in its own venv.
.venv-aot/.installed: pyproject.toml
	python3 -m venv .venv-aot
	.venv-aot/bin/python -m pip install -q --upgrade pip
	.venv-aot/bin/python -m pip install -q -e . "jax[cuda12]"
	touch $@

.PHONY: gpu-aot
gpu-aot: .venv-aot/.installed
	.venv-aot/bin/python bench/gpu_aot.py $(ARGS)

# Issue 18's GPU measurements, one call of ~7 minutes (results: log.md); ARGS=--smoke on CPU.
SUITE_PY ?= python3
.PHONY: gpu-suite
gpu-suite:
	PYTHONPATH=$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH} $(SUITE_PY) bench/gpu_suite.py $(ARGS)

# What a GPU image with only jax, equinox, optax, torch and transformers lacks (OmegaConf, Orbax
# and Orbax's requirements), as Python 3.12 wheels in .whl/ at this venv's versions; on the GPU
# machine `python3 bench/gpu_wheels.py install` installs the missing ones into /tmp/site.
.PHONY: gpu-wheels
gpu-wheels: $(VENV)/.installed
	$(PY) bench/gpu_wheels.py download

# bench/gpu_glue.sh's data as one file a GPU call carries beside .whl/: data/corpus_mini
# (configs/pretrain_mini.yaml, from ../shared's corpus) and a copy of the GLUE TSVs, xz-compressed
# (~21 MB; as folders, 41 + 11 MB, they and .whl/ would pass the 64 MiB a call carries). On the
# GPU machine: `tar -xJf data/gpu_glue.tar.xz`, then GLUE_DIR=data/glue.
GLUE_TSV ?= ../shared/data/glue
.PHONY: gpu-glue-data
gpu-glue-data: $(VENV)/.installed
	$(PY) -m bertjax.prepare configs/pretrain_mini.yaml
	rm -rf data/glue && cp -r $(GLUE_TSV) data/glue && chmod -R u+w data/glue
	tar -cJf data/gpu_glue.tar.xz.tmp data/corpus_mini data/glue
	mv data/gpu_glue.tar.xz.tmp data/gpu_glue.tar.xz
