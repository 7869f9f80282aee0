# One command sets up and checks everything: `make test` (what CI runs, see .ci/run).
# It creates .venv when missing, installs kgrec with its test tools, the Neo4j test server
# (FalkorDB Bolt), the Cypher linter and Chromium, then runs ruff, mypy and the whole test suite.
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup lint typecheck test

$(VENV)/.kgrec-installed: pyproject.toml .ci/setup-neo4j-test-deps.sh .ci/setup-browser-test-deps.sh
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test]"
	PYTHON=$(PY) bash .ci/setup-neo4j-test-deps.sh
	bash .ci/setup-browser-test-deps.sh
	touch $@

setup: $(VENV)/.kgrec-installed

lint: setup
	$(VENV)/bin/ruff check .

typecheck: setup
	$(PY) tools/typecheck.py

test: lint typecheck
	$(PY) -m pytest -q
