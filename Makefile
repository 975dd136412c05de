# The two commands a newcomer runs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DURATION ?= 180
DEMO_ARGS ?=

.PHONY: demo test lint typecheck unit integration e2e faults scale-test bench evaluate clean help

help:
	@echo "make demo      run the whole loop on embedded defaults (DURATION=$(DURATION) s; DEMO_ARGS=...)"
	@echo "make test      lint, type check and the whole test suite"
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
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(VENV)/.installed
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/pytest -q

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

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache edgeloop-data
