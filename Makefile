# atelier — one entry point for people and CI.
#   make demo   install if needed, then run the whole pipeline on the generated demo catalogue
#   make test   install if needed, then run the test suite
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
WORKDIR ?= workspace

CLUSTER ?= .cluster

.PHONY: install java demo test test-slow test-faults test-all test-scale scale-up scale-down lint clean help

help:
	@echo "make demo | make test | make test-slow | make test-faults | make test-all | make install | make lint | make clean"
	@echo "make scale-up | make test-scale | make scale-down   (the scale profile on this machine)"

install: $(VENV)/.installed

java:
	@if java -version 2>&1 | grep -q 'version "17'; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "Java 17 not found: installing openjdk-17-jre-headless with apt"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless; \
	else \
	  echo "error: Spark needs Java 17 (java -version shows: $$(java -version 2>&1 | head -1))." >&2; \
	  echo "Install openjdk-17-jre-headless (or set JAVA_HOME to a JDK 17) and rerun." >&2; exit 1; \
	fi

$(VENV)/.installed: setup.cfg pyproject.toml constraints.txt | java
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 needed, found " + sys.version.split()[0]'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip wheel setuptools
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $@

# The pipeline, then the API over its results (Ctrl-C stops the server).
demo: install
	$(BIN)/atelier --workdir $(WORKDIR) demo
	$(BIN)/atelier --workdir $(WORKDIR) serve

# `make test`: everything but the suites marked slow (end-to-end demo, serving, training
# pipelines); `make test-slow` runs those; `make test-faults` the fault-injection suite
# (tests/faults: the bad-input corpus, kill -9 at random points and reruns); `make test-all`
# all three. CI runs test and test-slow; see README for test-faults.
PYTEST := PYSPARK_PYTHON=$(abspath $(BIN)/python) $(BIN)/python -m pytest --durations=15

test: install
	$(PYTEST) -m "not slow and not faults and not scale"

test-slow: install
	$(PYTEST) -m "slow and not faults and not scale"

test-faults: install
	$(PYTEST) -s -m faults tests/faults

test-all: install
	$(PYTEST) -m "not scale"

# The scale profile on this machine (127.0.0.1 only): Spark standalone master + 2 workers,
# PostgreSQL (Feast registry, MLflow store), an MLflow server, Redis; see README "Scale profile".
scale-up: install
	$(BIN)/atelier cluster up --dir $(CLUSTER)

scale-down:
	@if [ -x $(BIN)/atelier ]; then $(BIN)/atelier cluster down --dir $(CLUSTER); fi

# Needs `make scale-up`: the same pipeline on both profiles, same tables/features/answers.
test-scale: install
	ATELIER_CLUSTER_DIR=$(abspath $(CLUSTER)) $(PYTEST) -s -m scale tests/scale

# Style, then the one-way layers contract ([importlinter] in setup.cfg).
lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python .ci/layers_diagram.py --check

clean:
	rm -rf $(WORKDIR) .pytest_cache
