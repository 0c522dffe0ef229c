#!/usr/bin/env bash
# Builds the agent's container image from the project's own files, without any image registry:
# a Debian root filesystem made by mmdebstrap (only what the .deb depends on, cached between
# builds) plus the gopher-agent .deb installed into it by packaging/container/Containerfile, built
# with buildah. The image is what packaging/kubernetes/daemonset.yaml runs; its default name is
# the one the DaemonSet names (agent/tests/image.rs checks both, and runs the image as the
# DaemonSet does).
#
#   scripts/build-image.sh              # -> localhost/gopher-agent:<version>
#   scripts/build-image.sh --tag NAME   # another name
#   scripts/build-image.sh --print-tag  # only print the default name
#
# Needs the release binary (scripts/setup.sh builds it; built here if missing), cargo-deb,
# mmdebstrap and buildah (scripts/test-deps.sh installs them). Run as root (mmdebstrap, buildah).
# The root filesystem is cached in $GOPHER_IMAGE_CACHE (default ~/.cache/gopher/image), keyed by
# the Debian suite, architecture and package list, and made afresh when a week old (security
# updates); a missing or broken cache only costs a new mmdebstrap run (about a minute).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
LOG_TAG=build-image
export PATH="$HOME/.cargo/bin:$PATH"

VERSION=$(sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n1)
TAG="localhost/gopher-agent:$VERSION"
while (($#)); do
  case $1 in
    --tag) TAG=$2; shift 2 ;;
    --print-tag) echo "$TAG"; exit 0 ;;
    *) echo "usage: $0 [--tag NAME] [--print-tag]" >&2; exit 2 ;;
  esac
done

for tool in mmdebstrap buildah dpkg-deb; do
  command -v "$tool" >/dev/null || { log "$tool is missing (scripts/test-deps.sh installs it)"; exit 1; }
done
cargo deb --version >/dev/null 2>&1 || { log "cargo-deb is missing (scripts/test-deps.sh)"; exit 1; }

TARGET=${CARGO_TARGET_DIR:-target}
if [ ! -x "$TARGET/release/gopher" ]; then
  log "cargo build --release (no $TARGET/release/gopher)"
  cargo build --release --locked -p gopher
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cargo deb -p gopher --no-build --fast --output "$WORK/gopher-agent.deb" >/dev/null

# The binary is built on this machine, so it needs this machine's Debian release (its glibc).
# shellcheck disable=SC1091
SUITE=$(. /etc/os-release && echo "${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}")
ARCH=$(dpkg --print-architecture)
# The .deb's own dependencies (versions dropped: the suite's satisfy them, dpkg -i checks; of
# alternatives the first, except that systemd-standalone-sysusers, added here, stands in for a
# whole systemd: the postinst makes the gopher-probe user with it), init-system-helpers for
# debhelper's systemd snippet (which only records the unit as enabled: no systemd runs in the
# image), and ca-certificates for Kafka over TLS.
PACKAGES=(systemd-standalone-sysusers init-system-helpers ca-certificates)
for group in $(dpkg-deb -f "$WORK/gopher-agent.deb" Depends | tr ',' '\n' | sed 's/([^)]*)//g; s/[[:space:]]//g'); do
  case "|$group|" in
    *"|systemd-standalone-sysusers|"*) ;;
    *) PACKAGES+=("${group%%|*}") ;;
  esac
done
PACKAGES=$(printf '%s\n' "${PACKAGES[@]}" | sort -u | paste -sd, -)

CACHE=${GOPHER_IMAGE_CACHE:-$HOME/.cache/gopher/image}
mkdir -p "$CACHE"
KEY=$(printf '%s %s %s' "$SUITE" "$ARCH" "$PACKAGES" | sha256sum | cut -c1-16)
ROOTFS="$CACHE/rootfs-$SUITE-$ARCH-$KEY.tar"
find "$CACHE" -name 'rootfs-*.tar' -mtime +7 -delete
if ! tar -tf "$ROOTFS" ./usr/bin/dpkg >/dev/null 2>&1; then
  log "mmdebstrap $SUITE ($PACKAGES) into $ROOTFS"
  # Essential packages only, plus ours; no manuals, locales or docs but the copyright files.
  mmdebstrap --quiet --variant=essential --format=tar --include="$PACKAGES" \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    "$SUITE" "$ROOTFS.part"
  mv "$ROOTFS.part" "$ROOTFS"
else
  log "root filesystem from the cache: $ROOTFS"
fi

# The build context: only these three files. The root filesystem is linked, not copied, when
# the cache is on the same filesystem.
ln "$ROOTFS" "$WORK/rootfs.tar" 2>/dev/null || cp "$ROOTFS" "$WORK/rootfs.tar"
cp packaging/container/Containerfile "$WORK/Containerfile"
log "buildah build -> $TAG"
# chroot isolation: the Containerfile's RUN (dpkg -i) needs no OCI runtime (crun refuses hybrid
# cgroup hosts). Ulimits within the hard limits of hosts that cap them.
buildah build --quiet --isolation chroot --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 \
  --build-arg "VERSION=$VERSION" --build-arg "REVISION=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
  -f "$WORK/Containerfile" -t "$TAG" "$WORK" >/dev/null
log "ready: $TAG"
