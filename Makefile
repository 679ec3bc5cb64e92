# `make quickstart` (install + a first few-shot result on Omniglot) and `make test` (install + the
# test suite). CI (.ci/run) runs the suite twice: on the core alone, then with the CPU kernels.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Optional extras of pyproject.toml, comma separated (e.g. EXTRAS=tensorflow).
EXTRAS ?=
# The optional CPU kernels (cpu_kernels/, groundwork_cpu): auto = where the machine is x86-64 Linux
# and JAX computes on the CPU; yes = always (a failed build stops the install); no = never.
CPU_KERNELS ?= auto
# Where the data lives is configuration: ../shared/data when this checkout has it
# (CI and the development machines), else pass OMNIGLOT_DIR=/your/copy.
OMNIGLOT_DIR ?= $(abspath ../shared/data/omniglot)
FASHION_MNIST_DIR ?= /usr/share/datasets/fashion-mnist
WORKDIR ?= workdirs/quickstart

# A comma, for the arguments of $(if ...).
, := ,
# CPU training runs with jemalloc preloaded, as PyTorch's CPU tuning guide recommends: XLA frees
# and re-allocates every step's buffers, which glibc hands back to the kernel each time
# (cpu_kernels/NOTES.md has the measurements). Empty where libjemalloc2 is not installed.
JEMALLOC := $(firstword $(wildcard /usr/lib/x86_64-linux-gnu/libjemalloc.so.2 \
  /usr/lib/aarch64-linux-gnu/libjemalloc.so.2 /usr/lib64/libjemalloc.so.2))
RUN_ENV := $(if $(JEMALLOC),LD_PRELOAD=$(JEMALLOC) \
  MALLOC_CONF=oversize_threshold:0$(,)dirty_decay_ms:-1$(,)muzzy_decay_ms:-1)

.PHONY: install cpu-kernels data allocator quickstart train benchmark tables test test-cpu-kernels format \
  format-check

install: $(VENV)/.core-installed
	@$(MAKE) --no-print-directory cpu-kernels

$(VENV)/.core-installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade --quiet pip
	$(VENV)/bin/pip install --quiet -r requirements.txt -e ".$(if $(EXTRAS),[$(EXTRAS)])"
	touch $@

cpu-kernels: $(VENV)/.core-installed
	@want=$(CPU_KERNELS); \
	if [ "$$want" = auto ]; then \
	  if [ "$$(uname -s)-$$(uname -m)" = Linux-x86_64 ] \
	      && $(PY) -c "import jax, sys; sys.exit(jax.default_backend() != 'cpu')"; then want=yes; \
	  else want=no; echo "CPU kernels: not built (not an x86-64 Linux CPU install)."; fi; \
	fi; \
	if [ "$$want" = yes ]; then $(MAKE) --no-print-directory $(VENV)/.cpu-kernels-installed; \
	elif [ "$$want" = no ]; then \
	  if [ -f $(VENV)/.cpu-kernels-installed ]; then \
	    $(VENV)/bin/pip uninstall --quiet --yes groundwork-cpu && rm $(VENV)/.cpu-kernels-installed; \
	  fi; \
	else echo "CPU_KERNELS=$$want: use auto, yes or no." >&2; exit 2; fi

$(VENV)/.cpu-kernels-installed: $(VENV)/.core-installed cpu_kernels/build-requirements.txt \
    cpu_kernels/setup.py cpu_kernels/pyproject.toml $(wildcard cpu_kernels/groundwork_cpu/*.py \
    cpu_kernels/groundwork_cpu/csrc/*)
	$(VENV)/bin/pip install --quiet -r cpu_kernels/build-requirements.txt
	$(VENV)/bin/pip install --quiet --no-build-isolation ./cpu_kernels
	$(PY) -c "import groundwork_cpu; groundwork_cpu.report()"
	touch $@

# Debian's dataset-fashion-mnist ships the official IDX files; installed when apt
# is available and they are missing.
data:
	@if [ ! -f $(FASHION_MNIST_DIR)/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  { $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; } \
	    || echo "warning: could not install dataset-fashion-mnist; its tests will be skipped."; \
	fi

allocator:
	@if [ -z "$(JEMALLOC)" ] && command -v apt-get >/dev/null; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  { $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libjemalloc2 >/dev/null; } \
	    || echo "warning: could not install libjemalloc2; CPU training runs on glibc's malloc (slower)."; \
	fi

quickstart: install data allocator
	$(MAKE) --no-print-directory train \
	  CONFIG=configs/fsl/dense_classification.py:dataset=omniglot,encoder=conv4,quick \
	  ARGS=--config.data_dir=$(OMNIGLOT_DIR)

# make train CONFIG=configs/<area>/<name>.py[:args] WORKDIR=dir [ARGS="--config.field=value ..."]
train:
	$(RUN_ENV) $(PY) launch/train.py --config=$(CONFIG) --workdir=$(WORKDIR) $(ARGS)

# make benchmark NAME=train_speed ARGS="--out=DIR ..." runs benchmarks/NAME.py as training runs.
benchmark:
	$(RUN_ENV) $(PY) benchmarks/$(NAME).py $(ARGS)

# make tables TABLE=quickstart|omniglot|...|all [ARGS=--run] reprints README's result tables from
# their workdirs (workdirs/tables), training the missing runs with --run.
TABLE ?= all
tables:
	$(RUN_ENV) $(PY) benchmarks/tables.py --table=$(TABLE) --omniglot_dir=$(OMNIGLOT_DIR) \
	  --fashion_mnist_dir=$(FASHION_MNIST_DIR) $(ARGS)

test: install data
	OMNIGLOT_DIR=$(OMNIGLOT_DIR) FASHION_MNIST_DIR=$(FASHION_MNIST_DIR) $(PY) -m pytest -q -x \
	  --durations=10

# The CPU kernels' own tests, then the suite again with them installed (but for the matrix of
# configs and data formats, which reads data the kernels never touch and takes minutes).
test-cpu-kernels: data
	$(MAKE) --no-print-directory install CPU_KERNELS=yes
	$(PY) -m pytest -q -x cpu_kernels/tests
	OMNIGLOT_DIR=$(OMNIGLOT_DIR) FASHION_MNIST_DIR=$(FASHION_MNIST_DIR) $(PY) -m pytest -q -x \
	  --durations=10 -m "not matrix"

format: $(VENV)/.core-installed
	$(VENV)/bin/pyink .

format-check: $(VENV)/.core-installed
	$(VENV)/bin/pyink --check --quiet .
