#!/usr/bin/env bash
# Installs what the test suite needs on a clean Debian machine with Rust, into the repo
# (tests/.tools) where possible. Idempotent: a second run installs nothing.
#   - A Python virtualenv (tests/.tools/venv) with `deltalake` + `pyarrow` (the independent
#     Delta reader the tests check tables with) and pycep-parser, checkov, pytest (infra tests).
#   - Azurite (npm): a real Azure Blob endpoint for the az:// table and dead-letter tests.
#   - Prism (npm): a mock that validates requests against the AI Search OpenAPI spec.
#   - redis-server (Debian): the real Redis the Redis sink tests start on free ports.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS=tests/.tools
mkdir -p "$TOOLS"

log() { printf '[setup] %s\n' "$*" >&2; }

# Python test tools live in their own virtualenv, so nothing on the machine is changed.
VENV="$TOOLS/venv"
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c 'import deltalake, pyarrow, pycep, checkov, pytest' 2>/dev/null; then
  log "installing Python deltalake + pyarrow (independent Delta reader) and the infra test tools"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check 'deltalake>=1.0,<2' 'pyarrow>=15' -r tests/infra/requirements.txt
fi

if [ ! -x "$TOOLS/node_modules/.bin/azurite-blob" ]; then
  command -v npm >/dev/null || { log "npm is missing: apt-get install -y nodejs npm"; exit 1; }
  log "installing Azurite into $TOOLS"
  (cd "$TOOLS" && npm install --silent --no-audit --no-fund --prefix . azurite@3 >/dev/null)
fi
if [ ! -x "$TOOLS/node_modules/.bin/prism" ]; then
  log "installing Prism (validates our AI Search requests against Microsoft's OpenAPI spec) into $TOOLS"
  (cd "$TOOLS" && npm install --silent --no-audit --no-fund --prefix . @stoplight/prism-cli@5 >/dev/null)
fi

if ! command -v redis-server >/dev/null || ! command -v openssl >/dev/null; then
  log "installing redis-server and openssl (apt)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  # policy-rc.d keeps the package from starting a system-wide server we do not use.
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null && $SUDO chmod +x /usr/sbin/policy-rc.d
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends redis-server redis-tools openssl >/dev/null
  $SUDO rm -f /usr/sbin/policy-rc.d
fi
log "ready"
