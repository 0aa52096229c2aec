# Vividly request tracking. `make run` and `make test` set up everything they need
# (virtualenv, Python packages, Apache Kafka jars, Debian packages) and are safe to re-run.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
KAFKA_LIBS := .cache/kafka-libs
VENV_STAMP := $(VENV)/.installed
KAFKA_STAMP := $(KAFKA_LIBS)/.resolved
SYSTEM_STAMP := .cache/.system-packages
# Jaeger v2, the local trace backend: built once from the tools module in deploy/jaeger
# (its go.mod pins the version; `go install …@version` is refused for its replace
# directives), then reused.
JAEGER_BIN := .cache/jaeger/jaeger
GO ?= go
# The Compose specification's JSON schema, from the docker-compose wheel on PyPI (pinned).
COMPOSE_SCHEMA := .cache/compose_spec.json
PYTEST_ARGS ?=

.PHONY: help setup system-packages run test test-unit test-integration lint format proto \
        proto-check bench clean jaeger

help:
	@echo "make run    - the whole local stack in the foreground: broker, Postgres, emulators, services, projector, API"
	@echo "make test   - lint (ruff, mypy, promtool), schema freshness, every test suite (both brokers)"
	@echo "make setup  - virtualenv, Python packages, Apache Kafka jars (idempotent)"
	@echo "make lint | format | proto | proto-check | bench | clean"

setup: $(SYSTEM_STAMP) $(VENV_STAMP) $(KAFKA_STAMP) $(COMPOSE_SCHEMA) $(JAEGER_BIN)

jaeger: $(JAEGER_BIN)

$(JAEGER_BIN): deploy/jaeger/go.mod deploy/jaeger/go.sum
	@mkdir -p $(dir $@)
	@echo "building Jaeger v2 from deploy/jaeger/go.mod (once; a few minutes cold)"
	cd deploy/jaeger && $(GO) build -trimpath -o $(abspath $@).tmp \
	  github.com/jaegertracing/jaeger/cmd/jaeger
	@mv $@.tmp $@

# Java and Maven resolve and run the reference Apache Kafka broker; ffmpeg renders the
# emulated videos and makes thumbnails; fonts for the rendered titles; Chromium runs the
# dashboard's browser tests (driven by Playwright with executable_path); Prometheus
# (promtool checks the config and alert rules; the real server reads the local stack);
# kcat (a test reads the local stack's log with it, as an SRE would).
$(SYSTEM_STAMP):
	@mkdir -p .cache
	@if ! command -v java >/dev/null || ! command -v mvn >/dev/null \
	    || ! command -v ffmpeg >/dev/null || [ ! -f /usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf ] \
	    || ! command -v chromium >/dev/null || ! command -v promtool >/dev/null \
	    || ! command -v kcat >/dev/null; then \
	  echo "installing Java, Maven, ffmpeg, fonts, Chromium, Prometheus and kcat from Debian"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    openjdk-17-jre-headless maven ffmpeg fonts-dejavu-core chromium prometheus kcat >/dev/null; \
	fi
	@touch $@

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[all,dev]'
	@touch $@

$(KAFKA_STAMP): deploy/kafka/pom.xml | $(SYSTEM_STAMP)
	mvn -q -B -f deploy/kafka/pom.xml dependency:copy-dependencies \
	  -DoutputDirectory=$(abspath $(KAFKA_LIBS))
	@touch $@

$(COMPOSE_SCHEMA): | $(VENV_STAMP)
	@mkdir -p .cache/wheels
	$(PY) -m pip download -q --no-deps --dest .cache/wheels docker-compose==1.29.2
	$(PY) -c "import zipfile,sys; z=zipfile.ZipFile('.cache/wheels/docker_compose-1.29.2-py2.py3-none-any.whl'); open('$@','wb').write(z.read('compose/config/compose_spec.json'))"

run: setup
	$(VENV)/bin/vividly up

lint: $(VENV_STAMP) $(SYSTEM_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	promtool check config deploy/prometheus/prometheus.yml
	promtool test rules deploy/prometheus/alerts_test.yml

format: $(VENV_STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

PROTOS := $(wildcard proto/vividly/v1/*.proto)
proto: $(VENV_STAMP)
	$(PY) -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. $(PROTOS)

# CI fails when the committed generated code is not what the .proto files produce.
proto-check: $(VENV_STAMP)
	@tmp=$$(mktemp -d); \
	$(PY) -m grpc_tools.protoc -Iproto --python_out=$$tmp --pyi_out=$$tmp $(PROTOS) && \
	for f in $$tmp/vividly/v1/*; do \
	  if ! cmp -s "$$f" "vividly/v1/$$(basename $$f)"; then \
	    echo "vividly/v1/$$(basename $$f) is stale: run 'make proto' and commit"; rm -rf $$tmp; exit 1; \
	  fi; \
	done; rm -rf $$tmp; echo "generated protobuf code is fresh"

# pytest exit code 5 means no test ran: that is a failure of the run, not a pass.
test: setup lint proto-check
	@set +e; $(VENV)/bin/pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing the run"; exit 1; fi; \
	exit $$rc

test-unit: setup
	$(VENV)/bin/pytest tests/unit tests/docs $(PYTEST_ARGS)

bench: setup
	$(PY) -m bench.tracker
	$(PY) -m bench.pipeline
	$(PY) -m bench.projector
	$(PY) -m bench.api

clean:
	rm -rf $(VENV) .cache .mypy_cache .ruff_cache .pytest_cache test-artifacts
