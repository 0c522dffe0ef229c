#!/usr/bin/env bash
# Sets up a Debian machine to build, run and test gopher, then builds the release binary.
# Idempotent: every step checks before it acts. Run as root (eBPF needs it anyway).
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLCHAIN=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
BPF_LINKER_VERSION=0.10.4
APT_PACKAGES=(
  gcc pkg-config curl ca-certificates python3 python3-pip
  make libssl-dev            # librdkafka (bundled, built by rdkafka-sys) with TLS: the system OpenSSL
  protobuf-compiler          # protoc: the control channel's gRPC code is generated at build time
  iproute2 nftables          # test network namespaces, veth, packet loss
  prometheus                 # promtool, and a real Prometheus server for end-to-end tests
  bpftrace bpftool           # benchmark peer and independent checks of attached programs
  nginx redis-server haproxy procps  # extension probe tests start their own instances (pgrep: start checks)
  dnsmasq-base               # lb_links test: a real dnsmasq in a test namespace (dnsmasq_link)
  libnginx-mod-stream        # the nginx link probe test proxies TCP through nginx's stream module
  systemd                    # systemd-analyze verify/security of the shipped unit (no systemd is started)
  dpkg-dev rpm cpio          # packaging tests: cargo-deb's dependency scan, rpm -qp, rpm2cpio | cpio
  podman buildah runc busybox-static  # container labels test: an image built from scratch, run by podman
  ansible-core python3-apt   # the Ansible role, run against localhost (apt module needs python3-apt)
  passwd util-linux          # useradd and setpriv: a real non-root user against the control channel
)

log() { printf '== setup: %s\n' "$*"; }

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  log "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v rustup >/dev/null 2>&1; then
  [ -x "$HOME/.cargo/bin/rustup" ] && export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v rustup >/dev/null 2>&1; then
  log "installing rustup (Debian package)"
  apt-get install -y -qq rustup >/dev/null
fi
export PATH="$HOME/.cargo/bin:$PATH"
if ! rustup toolchain list | grep -q "^$TOOLCHAIN"; then
  log "installing toolchain $TOOLCHAIN"
fi
# RUSTUP_AUTO_INSTALL may be 0: install exactly what rust-toolchain.toml names (no-op if present).
rustup toolchain install "$TOOLCHAIN" --profile minimal --component rust-src,clippy,rustfmt >/dev/null 2>&1 \
  || rustup toolchain install "$TOOLCHAIN" --profile minimal --component rust-src,clippy,rustfmt

if ! bpf-linker --version 2>/dev/null | grep -q "$BPF_LINKER_VERSION"; then
  log "installing bpf-linker $BPF_LINKER_VERSION (about 2 minutes)"
  cargo +"$TOOLCHAIN" install "bpf-linker@$BPF_LINKER_VERSION" --locked
fi

# The integration tests read /metrics with the reference Python parser of the exposition format.
if ! python3 -c 'import prometheus_client' 2>/dev/null; then
  log "pip install prometheus-client"
  python3 -m pip install -q prometheus-client 2>/dev/null \
    || python3 -m pip install -q --break-system-packages prometheus-client
fi

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
if ! python3 -c 'import confluent_kafka' 2>/dev/null; then
  log "pip install confluent-kafka"
  python3 -m pip install -q confluent-kafka 2>/dev/null \
    || python3 -m pip install -q --break-system-packages confluent-kafka
fi

# Package builders (packaging tests and packaging/README.md). Pinned, built once into ~/.cargo/bin.
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
# Strict schema validation of the Kubernetes manifest (offline: the schemas ship in the wheel).
if ! python3 -m kubernetes_validate --version >/dev/null 2>&1; then
  log "pip install kubernetes-validate"
  python3 -m pip install -q kubernetes-validate 2>/dev/null \
    || python3 -m pip install -q --break-system-packages kubernetes-validate
fi

log "cargo build --release"
cargo build --release --locked -p gopher
log "ready: target/release/gopher"
