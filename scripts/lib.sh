#!/usr/bin/env bash
# Shared by scripts/setup.sh and scripts/test-deps.sh: install what is missing, nothing else.
# Sourced, not run.

log() { printf '== %s: %s\n' "${LOG_TAG:-setup}" "$*"; }

# apt_install_missing PACKAGE...: one apt-get run for the packages dpkg does not have.
apt_install_missing() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# pip_install_missing MODULE PACKAGE...: pip-installs PACKAGE(s) unless python3 can import MODULE.
pip_install_missing() {
  local module=$1
  shift
  if ! python3 -c "import $module" 2>/dev/null; then
    log "pip install $*"
    python3 -m pip install -q "$@" 2>/dev/null \
      || python3 -m pip install -q --break-system-packages "$@"
  fi
}
