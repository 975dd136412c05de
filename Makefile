# The two commands a newcomer runs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DURATION ?= 180
DEMO_ARGS ?=
DEPLOY_TOOLS ?= $(VENV)/deploy-tools

.PHONY: demo test deploy-check lint typecheck unit integration e2e faults scale-test bench evaluate lock clean help

help:
	@echo "make demo      run the whole loop on embedded defaults (DURATION=$(DURATION) s; DEMO_ARGS=...)"
	@echo "make test      lint, type check, deploy-check and the whole test suite"
	@echo "make deploy-check  validate compose, Kubernetes, Ansible, Dockerfile, alerts, CI with the real tools"
	@echo "make faults    the fault suite on real components; prints the Reliability table"
	@echo "make scale-test  3 edges on a private NATS JetStream, 200 MQTT devices, kill -9 and 3 -> 2 replicas"
	@echo "make evaluate  replay real recordings and simulator scenarios through the engine (build/eval)"
	@echo "make bench     end-to-end throughput and latency through a private broker (build/bench.json)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/edgeloop demo --duration $(DURATION) $(DEMO_ARGS)

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests benchmarks deploy/check.py
	$(BIN)/ruff format --check src tests benchmarks deploy/check.py

typecheck: $(VENV)/.installed
	$(BIN)/mypy

test: lint typecheck deploy-check
	$(BIN)/pytest -q

# Installs its validators into $(DEPLOY_TOOLS) (cached there) and fails when one cannot run.
deploy-check: $(VENV)/.installed
	$(BIN)/python deploy/check.py --tools $(DEPLOY_TOOLS)

unit: $(VENV)/.installed
	$(BIN)/pytest -q tests/unit src

integration: $(VENV)/.installed
	$(BIN)/pytest -q tests/integration

e2e: $(VENV)/.installed
	$(BIN)/pytest -q tests/e2e

faults: $(VENV)/.installed
	rm -f build/reliability.jsonl
	$(BIN)/pytest -q tests/faults

scale-test: $(VENV)/.installed
	@rm -f build/scale-test.json
	@$(BIN)/pytest -q -s tests/faults/test_scale_nats.py; status=$$?; cat build/scale-test.json 2>/dev/null; exit $$status

evaluate: $(VENV)/.installed
	$(BIN)/edgeloop evaluate --dataset all --out build/eval

bench: $(VENV)/.installed
	$(BIN)/edgeloop bench --out build/bench.json

# Pinned, hashed requirements for the images (deploy/docker/Dockerfile): the full set from pyproject and
# the edge's subset (requirements/edge.in), for every platform the image is built for.
UV_COMPILE = $(BIN)/uv pip compile --quiet --generate-hashes --universal --python-version 3.11 --no-header
lock: $(VENV)/.installed
	$(UV_COMPILE) pyproject.toml -o requirements/full.lock
	$(UV_COMPILE) requirements/edge.in -o requirements/edge.lock

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache edgeloop-data
