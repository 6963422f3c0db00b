# make demo : set up .venv and run the demo job on a local ephemeral cluster
# make test : set up .venv and run the test suite
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
EXTRAS  ?= test,report,tpot,airflow,flyte,ssh,slurm,gateway,kubernetes
STAMP   := $(VENV)/.installed-$(subst ,,$(EXTRAS))

.PHONY: setup services demo test test-slow bench clean

$(BIN)/python:
	$(PY) -m pip install --quiet --disable-pip-version-check uv || true
	$(PY) -m uv venv --quiet --python $(PY) $(VENV) || $(PY) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(PY) -m uv pip install --quiet --python $(BIN)/python -e ".[$(EXTRAS)]" \
	  || $(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

setup: $(STAMP)

DATE    ?= $(shell date -u +%F)

# the nightly pipeline for today, on the local default: a synthetic drop -> ETL -> TPOT
demo: setup
	$(BIN)/daskjob demo-data --dest data/raw --date $(DATE) --rows 200000
	$(BIN)/daskjob run examples/nightly_etl.yaml --param date=$(DATE)
	$(BIN)/daskjob show runs
	# what that run did, as one HTML page (open it in a browser)
	$(BIN)/daskjob report
	$(BIN)/daskjob run examples/tpot_search.yaml --param output=models/$(DATE)
	$(BIN)/daskjob show runs
	# the same ETL as an Airflow DAG, through `airflow dags test` on SQLite in .airflow/
	AIRFLOW_HOME=$(CURDIR)/.airflow AIRFLOW__CORE__DAGS_FOLDER=$(CURDIR)/dags \
	  AIRFLOW__CORE__LOAD_EXAMPLES=False $(BIN)/airflow db migrate > /dev/null
	AIRFLOW_HOME=$(CURDIR)/.airflow AIRFLOW__CORE__DAGS_FOLDER=$(CURDIR)/dags \
	  AIRFLOW__CORE__LOAD_EXAMPLES=False $(BIN)/airflow dags test nightly_etl $(DATE) \
	  > .airflow/dags-test.log 2>&1 || (tail -40 .airflow/dags-test.log; exit 1)
	grep -E "daskjob run .* (succeeded|failed)|Marking run" .airflow/dags-test.log
	$(BIN)/daskjob show runs
	# the same ETL as a Flyte workflow, through `pyflyte run` (local execution)
	$(BIN)/pyflyte run workflows/nightly_etl.py nightly_etl --date $(DATE) --rows 200000
	$(BIN)/daskjob show runs

# the backend tests run against real sshd, Slurm and dask-gateway-server on loopback:
# installed (as root, with apt) and started here, stopped after
services: setup
	bash scripts/services/install.sh
	-PATH=$(CURDIR)/$(BIN):$$PATH bash scripts/services/up.sh

# two pytest processes share the tests (most of them wait on processes starting); the
# tests marked `alone` time a deadline set outside daskjob and run afterwards, by themselves.
# Each test has its own limit (pyproject.toml); the whole part has one too, so that a hang
# outside any test still ends the run, red
PYTEST  := $(BIN)/python -m pytest -q -ra
LIMIT   := timeout --foreground -k 60 2700

test: setup services
	$(LIMIT) $(PYTEST) -n 2 --dist loadgroup -m "not alone"; rc=$$?; \
	  $(LIMIT) $(PYTEST) -m alone; rc2=$$?; \
	  bash scripts/services/down.sh; [ $$rc -ne 0 ] && exit $$rc; exit $$rc2

# also the minutes-long tests
test-slow: setup services
	DASKJOB_SLOW_TESTS=1 $(PYTEST); rc=$$?; bash scripts/services/down.sh; exit $$rc

bench: setup
	$(BIN)/python bench/overhead.py

clean:
	rm -rf runs data models .airflow .pytest_cache
