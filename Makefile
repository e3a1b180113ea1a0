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
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) data

# Fashion-MNIST comes from Debian's dataset-fashion-mnist package (IDX files under $(FASHION_DIR)).
data:
	@if [ ! -d $(FASHION_DIR) ]; then \
		echo "Installing Debian package dataset-fashion-mnist"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		($$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq dataset-fashion-mnist) >/dev/null \
		|| echo "warning: could not install dataset-fashion-mnist; fashion-* tasks will be unavailable"; \
	fi

demo: install
	$(VENV)/bin/batchsage --threads $(DEMO_THREADS) recommend --task $(DEMO_TASK) --out $(DEMO_OUT)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

test: install lint
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache
