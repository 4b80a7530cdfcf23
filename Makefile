# The README's commands are targets here; CI (.ci/run) calls `make test` and nothing else.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

AARCH64 := aarch64-unknown-linux-gnu
ARM64_OVERLAY ?= /opt/vigil-arm64-overlay
# The cross build uses Debian's rustc-web (it carries the arm64 std); its own target dir keeps it
# from invalidating the host builds made by rustup's rustc.
CROSS_ENV := PKG_CONFIG_ALLOW_CROSS=1 \
	PKG_CONFIG_LIBDIR_aarch64_unknown_linux_gnu=$(ARM64_OVERLAY)/usr/lib/aarch64-linux-gnu/pkgconfig:/usr/lib/aarch64-linux-gnu/pkgconfig:/usr/share/pkgconfig \
	VIGIL_ARM64_OVERLAY=$(ARM64_OVERLAY) RUSTC=/usr/bin/rustc CARGO_TARGET_DIR=target/cross

.PHONY: setup cross-setup demo test lint unit aarch64 bench

## Install what is missing (apt, ONNX Runtime wheel); idempotent.
setup:
	appliance/scripts/setup.sh

cross-setup:
	VIGIL_ARM64_OVERLAY=$(ARM64_OVERLAY) cross/setup.sh

## The demo: local mosquitto on a free port, vigil on the synthetic camera, events shown live.
demo: setup
	cargo build --release -p vigil
	appliance/scripts/demo.sh target/release/vigil

## Everything CI checks: formatting, lints, the aarch64 build run under qemu, all tests (last,
## so their summary closes the output).
test: setup cross-setup lint aarch64 unit

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings

unit:
	cargo test --workspace --locked

aarch64: cross-setup
	$(CROSS_ENV) cargo build --release --locked -p vigil --target $(AARCH64)
	file target/cross/$(AARCH64)/release/vigil
	GST_REGISTRY_FORK=no qemu-aarch64 -L / target/cross/$(AARCH64)/release/vigil --version
	GST_REGISTRY_FORK=no qemu-aarch64 -L / target/cross/$(AARCH64)/release/vigil check-config appliance/config/demo.toml

## Throughput against side-by-side baselines; figures go to docs/performance.md.
bench: setup
	cargo build --release -p vigil
	target/release/vigil bench
