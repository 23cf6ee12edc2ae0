# Two commands do all the set-up: `make demo` and `make test`. Both create .venv, install the package with the
# pinned torch/torchvision from constraints.txt, and fetch the offline Fashion-MNIST data when it is missing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup data test test-slow demo typecheck api-docs wheel-check clean

# The public API, type-checked (mypy settings in pyproject.toml [tool.mypy]; the rest of the package is followed
# for types, not reported).
PUBLIC_MODULES := src/splitshield/__init__.py src/splitshield/api src/splitshield/handle.py \
                  src/splitshield/evaluation/attack_result.py

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

typecheck: setup
	$(BIN)/python -m mypy $(PUBLIC_MODULES)

# The API reference from the docstrings (pdoc) in build/api-docs; any pdoc warning fails it.
api-docs: setup
	PYTHON=$(BIN)/python bash scripts/api-docs.sh

# sdist + wheel with `python -m build`, the wheel installed in a fresh venv, `splitshield --help` and example (a).
wheel-check: setup
	BUILD_PYTHON=$(BIN)/python bash scripts/check-wheel.sh

clean:
	rm -rf $(VENV) runs .pytest_cache build/api-docs build/mypy-cache
