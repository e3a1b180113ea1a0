# The README's two commands: `make demo` and `make test`. Both install what they need first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
FASHION_DIR := /usr/share/datasets/fashion-mnist
DEMO_TASK ?= digits-mlp
DEMO_OUT ?= out/demo
# One torch thread: steady timings even when other processes share the cores (see README).
DEMO_THREADS ?= 1

.PHONY: install data demo test lint clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch is pinned through the constraints file in the same command, so pip never pulls CUDA wheels.
	$(PIP) install -q -c constraints.txt -e '.[dev,postgres,lightning,hf,keras,keras-tuner,trackers]'
	touch $(STAMP)

install: $(STAMP) data

# Debian packages, each installed only if missing (as root, or with sudo): Fashion-MNIST's IDX files
# under $(FASHION_DIR) (dataset-fashion-mnist), and the PostgreSQL server binaries under
# /usr/lib/postgresql/*/bin (postgresql) that the sweep tests start a throwaway server from.
data:
	@missing=""; \
	[ -d $(FASHION_DIR) ] || missing="$$missing dataset-fashion-mnist"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
		echo "Installing Debian package(s)$$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		($$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing) >/dev/null \
		|| echo "warning: could not install$$missing; fashion-* tasks or the PostgreSQL tests will be unavailable"; \
	fi

demo: install
	$(VENV)/bin/batchsage --threads $(DEMO_THREADS) fit --task $(DEMO_TASK) --out $(DEMO_OUT)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

# The PostgreSQL sweep tests must run here: a missing server fails them instead of skipping them
# (make test REQUIRE_POSTGRES=0 lets them skip). Likewise the Keras and tracker tests: the install
# above brings their extras, so a missing package fails them (BATCHSAGE_REQUIRE_EXTRAS=1).
REQUIRE_POSTGRES ?= 1
test: install lint
	BATCHSAGE_REQUIRE_POSTGRES=$(REQUIRE_POSTGRES) BATCHSAGE_REQUIRE_EXTRAS=1 $(PY) -m pytest -q

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache
