# labshare: `make run` starts everything on embedded defaults, `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: run stack test lint bench install migrate clean screenshots

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

## Migrate, seed demo data and serve everything at http://127.0.0.1:$${LABSHARE_PORT:-8080}
run: $(STAMP)
	LABSHARE_DEV_MODE=1 $(PY) -m services run

## Every component as its own process (2 replicas of each API, relay and consumer, the web app, nginx in
## front) on this machine's PostgreSQL and RabbitMQ: see deploy/stack.py
stack: $(STAMP)
	$(PY) deploy/stack.py

migrate: $(STAMP)
	$(PY) -m services migrate

## The whole suite: unit, integration (PostgreSQL, RabbitMQ) and end-to-end tests
test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest

lint: $(STAMP)
	$(PY) -m ruff check .

## Benchmarks: the write path (bench/results.md), calendar feeds (bench/feeds.md), notifications (bench/notify.md)
bench: $(STAMP)
	$(PY) bench/run.py
	$(PY) bench/feeds.py
	$(PY) bench/notify.py

## Refresh the screenshots the README shows (runs the browser tests)
screenshots: $(STAMP)
	LABSHARE_SCREENSHOT_DIR=docs/screenshots $(PY) -m pytest tests/e2e/test_web_browser.py -q

clean:
	rm -rf var .pytest_cache
