# Two commands: `make quickstart` (install + a first few-shot result on Omniglot)
# and `make test` (install + the test suite; .ci/run runs exactly this).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Where the data lives is configuration: ../shared/data when this checkout has it
# (CI and the development machines), else pass OMNIGLOT_DIR=/your/copy.
OMNIGLOT_DIR ?= $(abspath ../shared/data/omniglot)
FASHION_MNIST_DIR ?= /usr/share/datasets/fashion-mnist
WORKDIR ?= workdirs/quickstart

.PHONY: install data allocator quickstart test benchmark

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade --quiet pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	@# Compiles the CPU kernels (oneDNN layers, the propagation graph); says why not (and goes
	@# on) where it cannot.
	$(PY) -c "from groundwork.encoders import onednn_conv; onednn_conv.report()"
	$(PY) -c "from groundwork.encoders import onednn_layers; onednn_layers.report()"
	$(PY) -c "from semisup import knn_graph; knn_graph.report()"
	touch $@

# Debian's dataset-fashion-mnist ships the official IDX files; installed when apt
# is available and they are missing.
data:
	@if [ ! -f $(FASHION_MNIST_DIR)/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  { $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; } \
	    || echo "warning: could not install dataset-fashion-mnist; its tests will be skipped."; \
	fi

# jemalloc keeps XLA's freed step buffers for reuse instead of returning them to the kernel
# and faulting them back in every step (groundwork/host_memory.py; the launch scripts preload
# it when present). Installed when apt is available and it is missing.
allocator:
	@if ! ls /usr/lib/*/libjemalloc.so.2 /usr/lib64/libjemalloc.so.2 >/dev/null 2>&1 && command -v apt-get >/dev/null; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  { $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libjemalloc2 >/dev/null; } \
	    || echo "warning: could not install libjemalloc2; CPU training falls back to huge pages (slower)."; \
	fi

quickstart: install data allocator
	$(PY) launch/train.py --config=configs/fsl/dense_classification.py:dataset=omniglot,encoder=conv4,quick \
	  --config.data_dir=$(OMNIGLOT_DIR) --workdir=$(WORKDIR)

test: install data allocator
	OMNIGLOT_DIR=$(OMNIGLOT_DIR) FASHION_MNIST_DIR=$(FASHION_MNIST_DIR) $(PY) -m pytest -q -x --durations=15
