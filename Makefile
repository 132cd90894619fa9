# chunksnap — build, test, benchmark and demo entry points.
# `make deps` installs everything the build and the tests need on a fresh Debian 12 machine (root).

SHELL := /bin/bash
CARGO ?= cargo
JOBS ?= 2
CARGO_FLAGS ?= -j$(JOBS)
APT_PACKAGES := containerd runc docker-registry casync skopeo umoci debootstrap protobuf-compiler libprotobuf-dev \
	zstd iproute2 jq unzip python3-yaml busybox-static e2fsprogs util-linux mount ca-certificates \
	attr tar time gnuplot-nox libc6-dev gcc

.PHONY: all deps build test unit e2e e2e-matrix lint fmt-check clippy bench demo chart-lint fuzz clean-e2e

all: build

deps:
	@if [ "$$(id -u)" != 0 ]; then echo "make deps must run as root (apt-get)"; exit 1; fi
	DEBIAN_FRONTEND=noninteractive apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PACKAGES)
	# containerd and docker-registry must not run as system services: tests start their own.
	-systemctl disable --now containerd docker-registry >/dev/null 2>&1 || true
	-pkill -x docker-registry || true
	rustup show active-toolchain || rustup toolchain install
	rustup component add rustfmt clippy
	bash scripts/install-helm.sh
	# containerd 1.7 and 2.1 for the e2e matrix (1.6 is the system's), under /opt/chunksnap-test.
	bash scripts/install-containerd.sh

build:
	$(CARGO) build --workspace --all-targets $(CARGO_FLAGS)

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets $(CARGO_FLAGS) -- -D warnings

lint: fmt-check clippy

unit:
	$(CARGO) test --workspace --exclude chunksnap-e2e $(CARGO_FLAGS)

# The e2e tests start the chunksnap and chunkconv binaries: build them first.
e2e:
	$(CARGO) build -p chunksnap -p chunkconv --bins $(CARGO_FLAGS)
	$(CARGO) test -p chunksnap-e2e $(CARGO_FLAGS) -- --test-threads=1

# Only the containerd matrix (1.7 and 2.1 scenarios, stock configs of all three); `make e2e` includes it.
e2e-matrix:
	$(CARGO) build -p chunksnap -p chunkconv --bins $(CARGO_FLAGS)
	$(CARGO) test -p chunksnap-e2e $(CARGO_FLAGS) -- --test-threads=1 matrix::

chart-lint:
	bash scripts/chart-lint.sh

# Everything: formatting, lints, unit + integration tests, the chart, and e2e against real services.
test: lint unit chart-lint e2e

bench:
	bash bench/run.sh

demo:
	bash scripts/demo.sh

fuzz:
	bash scripts/fuzz.sh
