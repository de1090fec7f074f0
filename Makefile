# nasforge: `make demo` and `make test` are the two set-up commands on a fresh machine.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: install demo test test-all bench lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test]'
	rm -f $(VENV)/.installed-*; touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/nasforge search examples/quickstart.yaml --name quickstart-$(shell date +%Y%m%d-%H%M%S)

# One xdist worker per core; whole files per worker so module fixtures are built once.
test: install
	$(PY) -m pytest -q -n auto --dist loadfile

test-all: install
	$(PY) -m pytest -q -m "not gpu"

bench: install
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) benchmarks/overhead.py

lint: install
	$(PY) -m pip install -q -e '.[dev]'
	$(VENV)/bin/ruff check nasforge tests benchmarks
	$(VENV)/bin/mypy nasforge

clean:
	rm -rf $(VENV) build *.egg-info
