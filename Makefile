# The few commands people type. The README's two set-up commands create .venv.
PY ?= .venv/bin/python

.PHONY: run test lint format stubs

run:
	.venv/bin/affinity up

test:
	$(PY) -m pytest

lint:
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

format:
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

# The gRPC stubs of protocol/grpc_service/inference.proto (committed; a test fails on drift).
stubs:
	$(PY) -m protocol.grpc_service.generate
