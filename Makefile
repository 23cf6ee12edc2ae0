# Two commands do all the set-up: `make demo` and `make test`. Both create .venv, install the package with the
# pinned torch/torchvision from constraints.txt, and fetch the offline Fashion-MNIST data when it is missing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup data test test-slow demo clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test,serve]'
	touch $(STAMP)

data:
	@bash scripts/get-data.sh

test: setup data
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-slow: setup data
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

demo: setup data
	$(BIN)/splitshield demo

clean:
	rm -rf $(VENV) runs .pytest_cache
