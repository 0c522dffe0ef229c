#!/usr/bin/env bash
# Sets up a Debian machine to build and run gopher, then builds the release binary: what
# building and running need, nothing else (the tests' daemons, broker, package builders and
# Python libraries are scripts/test-deps.sh's, which scripts/test.sh runs).
# Idempotent: every step checks before it acts. Run as root (eBPF needs it anyway).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

TOOLCHAIN=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
BPF_LINKER_VERSION=0.10.4
APT_PACKAGES=(
  gcc pkg-config curl ca-certificates
  make libssl-dev           # librdkafka (bundled, built by rdkafka-sys) with TLS: the system OpenSSL
  protobuf-compiler         # protoc: the control channel's gRPC code is generated at build time
  python3 procps            # running: the shipped extension probes (Python) and their start checks (pgrep)
)
apt_install_missing "${APT_PACKAGES[@]}"

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

# bpf-linker links the eBPF programs. No registry has a prebuilt one (crates.io ships sources):
# built once, about 2 minutes.
if ! bpf-linker --version 2>/dev/null | grep -q "$BPF_LINKER_VERSION"; then
  log "installing bpf-linker $BPF_LINKER_VERSION (about 2 minutes)"
  cargo +"$TOOLCHAIN" install "bpf-linker@$BPF_LINKER_VERSION" --locked
fi

log "cargo build --release"
cargo build --release --locked -p gopher
log "ready: target/release/gopher"
