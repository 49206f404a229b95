# The two commands a newcomer needs: `make run` and `make test`.

CONFIG ?= gateway.toml

.PHONY: run demo test lint deps bench fuzz mock wheel

## Run the gateway on gateway.toml (release build).
run: deps
	cargo run --release -- serve --config $(CONFIG)

## The whole flow with no account anywhere: mock upstream + gateway, UI on :8000.
demo: deps
	cargo run --release --example demo

## Run every test: unit, integration, the browser test, the real-client interop tests and
## the conformance suite.
test: deps
	scripts/install-test-deps.sh
	scripts/interop-venv.sh >/dev/null
	scripts/interop-node.sh >/dev/null
	cargo test --all-targets

## Formatting and lints, as CI checks them.
lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings

## The gateway as a manylinux_2_28 Python wheel carrying the binary, checked.
wheel: deps
	scripts/build-wheel.sh

## The mock upstream MCP server (OAuth-less, bearer token `dev-token`) on port 9000.
mock:
	cargo run --example mock_upstream -- --port 9000

## Load comparison: direct vs gateway vs nginx (release builds).
bench: deps
	benches/load.sh

## Fuzz the parsers of untrusted input, a minute per target (cargo-fuzz, stable toolchain).
fuzz: deps
	scripts/fuzz.sh

deps:
	@scripts/install-deps.sh
