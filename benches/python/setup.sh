#!/usr/bin/env bash
# Installs the Python baseline handler's dependencies (benches/python/requirements.txt) into
# its own virtualenv, tests/.tools/bench-venv, so nothing on the machine is changed.
# Idempotent: a second run installs nothing. Prints the venv's python at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
TOOLS=tests/.tools
mkdir -p "$TOOLS"

log() { printf '[bench-setup] %s\n' "$*" >&2; }

VENV="$TOOLS/bench-venv"
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  if ! python3 -m venv "$VENV" 2>/dev/null; then
    # Debian splits venv (ensurepip) out of python3: install it, then try again.
    log "python3 -m venv failed: installing python3-venv (apt)"
    rm -rf "$VENV"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
    python3 -m venv "$VENV"
  fi
fi
# Installed already when every pinned line of requirements.txt appears in `pip freeze`.
PINS=$(grep -v '^#' benches/python/requirements.txt | grep . || true)
HAVE=$("$VENV/bin/python" -m pip freeze --disable-pip-version-check 2>/dev/null \
  | grep -icxF -f <(printf '%s\n' "$PINS") || true)
if [ "$HAVE" != "$(printf '%s\n' "$PINS" | grep -c .)" ]; then
  log "installing benches/python/requirements.txt into $VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r benches/python/requirements.txt
fi
log "ready"
echo "$(pwd)/$VENV/bin/python"
