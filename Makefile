# Entry points: `make demo` and `make test` (both create .venv when missing).
# Every install here takes the exact versions in constraints.txt; `make lock` refreshes them.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.installed
CONSTRAINTS := constraints.txt

.PHONY: demo test lint bench lock clean

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c $(CONSTRAINTS) pip
	$(PIP) install -q -c $(CONSTRAINTS) -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m experiments.compress --config experiments/configs/digits_deep_compression.py --workdir runs/demo --overwrite

test: $(STAMP)
	JAX_PLATFORMS=cpu $(PY) -m pytest -q -n 2 --dist loadfile

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) benchmarks/train_throughput.py --quick

# Resolve the newest versions pyproject.toml allows in a fresh temporary venv and pin them
# all (pip included; setuptools and wheel are build tools, left out). Run `make test` after it.
lock:
	@set -eu; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(PYTHON) -m venv "$$tmp/venv"; \
	lock_pip="$$tmp/venv/bin/python -m pip --disable-pip-version-check"; \
	$$lock_pip install -q --upgrade pip; \
	$$lock_pip install -q -e '.[dev]'; \
	version=$$("$$tmp/venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
	{ \
	  echo "# Exact versions that 'make test' passed with; every make install uses them:"; \
	  echo "#   pip install -c constraints.txt -e '.[dev]'"; \
	  echo "# Refresh with 'make lock' (fresh temporary venv, newest versions that pyproject.toml"; \
	  echo "# allows, pip freeze), then run 'make test' and commit both files if it passes."; \
	  echo "# pyproject.toml keeps version ranges: a plain 'pip install jaxopt_models' ignores this."; \
	  echo "# python: $$version"; \
	  $$lock_pip freeze --all --exclude-editable | grep -vE '^(setuptools|wheel)=='; \
	} > "$$tmp/constraints.txt"; \
	mv "$$tmp/constraints.txt" $(CONSTRAINTS); \
	echo "wrote $(CONSTRAINTS) ($$(grep -c '==' $(CONSTRAINTS)) pins, Python $$version); now run: make test"

clean:
	rm -rf $(VENV) runs .pytest_cache
