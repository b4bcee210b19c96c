# brats-seg: `make demo` runs the pipeline on synthetic phantoms, `make test` runs the test suite.
# Both create .venv on first use. The CPU build of torch is installed by default; GPU users run
#   make venv TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu124"
# (or install their torch into .venv first): an already-installed torch is kept.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-all bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/brats-seg demo --out runs/demo

# Everything but the `slow` marker; pytest's exit 5 (no tests collected) fails the target.
test: $(STAMP)
	$(PY) -m pytest -m "not slow" -q

test-all: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
