# Shorthands for ./dev (which needs nothing but Python and bash).
.PHONY: run test lint bench-deploy bench-gateway

run:
	./dev run

test:
	./dev test

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

bench-deploy:
	./dev bench deploy_latency

bench-gateway:
	./dev bench gateway_latency
