# make demo : set up .venv and run the demo job on a local ephemeral cluster
# make test : set up .venv and run the test suite
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
EXTRAS  ?= test,report
STAMP   := $(VENV)/.installed-$(subst ,,$(EXTRAS))

.PHONY: setup demo test bench clean

$(BIN)/python:
	$(PY) -m pip install --quiet --disable-pip-version-check uv || true
	$(PY) -m uv venv --quiet --python $(PY) $(VENV) || $(PY) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(PY) -m uv pip install --quiet --python $(BIN)/python -e ".[$(EXTRAS)]" \
	  || $(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

setup: $(STAMP)

demo: setup
	$(BIN)/daskjob run examples/demo.yaml --param date=$$(date -u +%F)
	$(BIN)/daskjob show runs

test: setup
	$(BIN)/python -m pytest -q -ra

bench: setup
	$(BIN)/python bench/overhead.py

clean:
	rm -rf runs .pytest_cache
