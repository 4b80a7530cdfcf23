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

# TensorRT 10 and CUDA headers for tensorrt-sys where JetPack is absent (see tensorrt-sys/ci/headers.sh).
TRT_ENV := target/trt-headers/env.sh
# The GPU tests are #[ignore]d (shown as ignored where there is no GPU); on the GPU machine,
# VIGIL_REQUIRE_GPU=1 runs them, and a missing GPU then fails them.
GPU_TESTS := $(if $(filter 1,$(VIGIL_REQUIRE_GPU)),-- --include-ignored)
WITH_TRT := source $(TRT_ENV) &&

.PHONY: setup cross-setup trt-headers demo test lint yocto unit hil hil-vm vm-image-background aarch64 bench jetson-check deb deb-jetpack deb-ops deb-ops-arm64 bench-fleet next-vigil check-ultralytics

## Install what is missing (apt, ONNX Runtime wheel); idempotent.
setup:
	appliance/scripts/setup.sh

cross-setup:
	VIGIL_ARM64_OVERLAY=$(ARM64_OVERLAY) cross/setup.sh

trt-headers:
	mkdir -p target/trt-headers
	tensorrt-sys/ci/headers.sh > $(TRT_ENV).new && mv $(TRT_ENV).new $(TRT_ENV)

## The demo: local mosquitto on a free port, vigil on the synthetic camera, events shown live.
demo: setup
	cargo build --release -p vigil
	appliance/scripts/demo.sh target/release/vigil

## Everything CI checks: formatting, lints, the aarch64 build run under qemu, all tests, then the
## HIL suite on this machine's targets (its verdicts close the output).
test: setup cross-setup trt-headers vm-image-background lint yocto aarch64 unit hil hil-vm

## The virtual board's image, built while the lints and the cross build run (it downloads and
## unpacks packages; nothing timed runs meanwhile): `make hil-vm` waits for it (a lock).
vm-image-background:
	mkdir -p target/hil-vm
	hil/vm/build-image.sh amd64 target/hil-vm/amd64 >target/hil-vm/amd64-build.log 2>&1 &

lint: trt-headers
	cargo fmt --all -- --check
	$(WITH_TRT) cargo clippy --workspace --all-targets --locked -- -D warnings
	$(WITH_TRT) cargo clippy -p vigil -p vigil-infer --all-targets --features vigil/tensorrt --locked -- -D warnings
	.ci/check-boundaries.sh

## The Yocto layer's offline checks: the crates include against Cargo.lock, oelint-adv, the
## Rust and release pins (yocto/meta-vigil/README.md).
yocto: setup
	.ci/check-yocto.sh

## The workspace's tests (tensorrt-sys against the stub), the systemd unit's offline checks, the
## .deb built, linted, installed, upgraded, removed and purged here, then vigil's CUDA and
## TensorRT code. One test binary at a time: see docs/decisions/0018.
unit: trt-headers next-vigil
	$(WITH_TRT) cargo test --workspace --locked
	.ci/check-unit.sh target/debug/vigil
	.ci/check-deb.sh
	.ci/check-deb-jetpack.sh
	.ci/check-deb-ops.sh
	$(WITH_TRT) cargo test -p vigil-infer --features tensorrt --locked --lib $(GPU_TESTS)
	$(WITH_TRT) cargo test -p vigil --features tensorrt --locked --test cuda $(GPU_TESTS)

## The HIL acceptance suite (docs/hil.md): all of it on the host build (vigil-next as the good
## binary update) but binary-ota-hang, and on the aarch64 build under qemu the scenarios that fit
## CI's time (its prefix has no RTSP or H.264 plugins: a synthetic camera). Reports (JUnit,
## JSON, HTML) in target/hil-report/{local,qemu}/. binary-ota-hang is binary-ota-crash's code
## with a binary that sleeps instead of crashing, and waits out three start timeouts (94 s):
## tests/ab.rs runs that case against the same unit and supervisor, so CI leaves it out here
## (reported skipped, with this reason); `make hil` with HIL_SKIP= runs it. Under qemu: the
## store across a kill and the soak; the reconnection scenarios (broker-outage, network-faults:
## the same Rust code as on the host, 72 s) left for CI's time (decision 0018).
HIL_QEMU_SCENARIOS := power-cut soak
HIL_SKIP ?= --skip "binary-ota-hang=its case runs in tests/ab.rs (a_binary_that_never_becomes_ready…), against the same unit and supervisor; left out for CI's time"
hil: trt-headers next-vigil
	$(WITH_TRT) cargo build --locked -p vigil -p vigil-hil
	target/debug/vigil-hil run --local target/debug/vigil --next-vigil target/fixtures/vigil-next --soak-s 60 \
		$(HIL_SKIP) --out target/hil-report/local
	target/debug/vigil-hil run --qemu target/cross/$(AARCH64)/release/vigil --soak-s 30 \
		$(addprefix --scenario ,$(HIL_QEMU_SCENARIOS)) --out target/hil-report/qemu

## The virtual board (docs/hil.md, "The virtual board"): the .deb installed with apt in a Debian
## 12 guest under qemu-system (TCG here), systemd 252 as PID 1, power cut by killing qemu. The
## scenarios only a real PID 1, a real power loss or apt can judge; the image is built from
## Debian's packages into target/hil-vm/ on first use. The packages are the ones
## .ci/check-deb.sh builds from the debug binary (`make unit`; made here when missing): after
## changing vigil, `make unit` or remove target/deb-check/ before `make hil-vm`. (Not a file
## dependency on target/debug/vigil: `make hil`'s build relinks it, which would check the
## packages a second time in `make test`, 28 s.)
HIL_VM_SCENARIOS := power-cut systemd-unit config-set package-upgrade disk-write-errors clock-from-2000
hil-vm: trt-headers | target/deb-check/vigil_2.deb
	$(WITH_TRT) cargo build --locked -p vigil-hil
	target/debug/vigil-hil run --vm --deb target/deb-check/vigil_1.deb --upgrade-deb target/deb-check/vigil_2.deb \
		$(addprefix --scenario ,$(HIL_VM_SCENARIOS)) --out target/hil-report/vm

target/deb-check/vigil_2.deb: | target/debug/vigil
	.ci/check-deb.sh

target/debug/vigil: | trt-headers
	$(WITH_TRT) cargo build --locked -p vigil

## The second vigil tests/ab.rs installs over the air: the same code, reporting the next patch
## version (VIGIL_VERSION, see appliance/vigil/build.rs), stripped. Building it relinks only the
## vigil crate, and so does the test build after it.
NEXT_VIGIL_VERSION := $(shell awk -F'"' '/^version = /{split($$2, v, "."); print v[1] "." v[2] "." v[3] + 1; exit}' Cargo.toml)
next-vigil: trt-headers
	$(WITH_TRT) VIGIL_VERSION=$(NEXT_VIGIL_VERSION) cargo build --locked -p vigil --bin vigil
	mkdir -p target/fixtures
	objcopy --strip-debug target/debug/vigil target/fixtures/vigil-next.new
	mv target/fixtures/vigil-next.new target/fixtures/vigil-next

aarch64: cross-setup
	@# One build: tough's rustls features unify into vigil's, but vigil uses the ring provider
	@# only and its binary is byte-for-byte the same size either way (measured); two builds
	@# would compile the shared crates twice.
	$(CROSS_ENV) cargo build --release --locked -p vigil -p vigil-ota -p vigil-ops --target $(AARCH64)
	file target/cross/$(AARCH64)/release/vigil
	@# JetPack 6 has glibc 2.35 and GStreamer 1.20 (this machine builds on 2.36 and 1.22).
	.ci/check-abi.sh target/cross/$(AARCH64)/release/vigil
	.ci/check-abi.sh target/cross/$(AARCH64)/release/vigil-ops
	@# No path of the machine that built it may be compiled into the binary a device runs.
	@if grep -qaF "$(CURDIR)" target/cross/$(AARCH64)/release/vigil; then \
		echo "aarch64: the binary holds the build path $(CURDIR)"; exit 1; fi
	GST_REGISTRY_FORK=no qemu-aarch64 -L / target/cross/$(AARCH64)/release/vigil --version
	GST_REGISTRY_FORK=no qemu-aarch64 -L / target/cross/$(AARCH64)/release/vigil check-config appliance/config/demo.toml
	@# The whole path: a test:// camera, ONNX Runtime's aarch64 library, sled, mosquitto, an event.
	.ci/qemu-smoke.sh target/cross/$(AARCH64)/release/vigil
	@# tough's signatures run on aws-lc-rs: make and read an ed25519 key with the aarch64 build.
	rm -f target/cross/qemu-check.der
	qemu-aarch64 -L / target/cross/$(AARCH64)/release/vigil-ota keygen target/cross/qemu-check.der

## On a Jetson (JetPack 6, TensorRT 10.x installed): build with TensorRT, build the engine for
## this board and compare its outputs with the bundle's reference (docs/tensorrt.md).
jetson-check:
	VIGIL_TRT_REQUIRE_REAL=1 cargo build --release -p vigil --features tensorrt
	target/release/vigil model-check --config appliance/config/demo.toml --backend tensorrt

## The release .deb for this machine's architecture (docs/packaging.md), in target/debian/.
deb: setup trt-headers
	$(WITH_TRT) cargo build --release --locked -p vigil
	.ci/stage-deb.sh
	cargo deb -p vigil --no-build

## The operator's package, vigil-ops, for this machine and for arm64 (docs/fleet.md).
deb-ops: setup
	cargo build --release --locked -p vigil-ops
	cargo deb -p vigil-ops --no-build

deb-ops-arm64: aarch64
	CARGO_TARGET_DIR=target/cross cargo deb -p vigil-ops --variant arm64 --target $(AARCH64) --no-build

## The JetPack 6 package (arm64) from the cross build: CPU backend and GStreamer (NVDEC through
## L4T's plugins). The TensorRT build is made on a Jetson (docs/packaging.md).
deb-jetpack: aarch64
	.ci/stage-deb.sh arm64
	CARGO_TARGET_DIR=target/cross cargo deb -p vigil --variant jetpack --target $(AARCH64) --no-build

## Issue 22's checks on real Ultralytics exports (models/tools/check-ultralytics.sh): ~3 GB of
## PyPI wheels and ~3 min, so not part of `make test`.
check-ultralytics: setup
	models/tools/check-ultralytics.sh

## Throughput against side-by-side baselines; figures go to docs/performance.md.
bench: setup bench-fleet
	cargo build --release -p vigil -p vigil-ops -p vigil-hil
	target/release/vigil-ops bench
	target/release/vigil-store-bench
	target/release/vigil-ota-bench

## The operator's tools against simulated fleets of 1 000, 3 000 and 10 000 devices (docs/fleet.md).
bench-fleet: setup
	cargo build --release -p vigil-ops
	target/release/vigil-ops fleet-bench --sizes 1000,3000,10000
