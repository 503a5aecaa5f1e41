#!/usr/bin/env bash
# Installs what the test suite needs on a clean Debian machine with Rust, into the repo
# (tests/.tools) where possible. Idempotent: a second run installs nothing.
#   - Python `deltalake` + `pyarrow`: the independent Delta reader the tests check tables with.
#   - Azurite (npm): a real Azure Blob endpoint for the az:// table and dead-letter tests.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS=tests/.tools
mkdir -p "$TOOLS"

log() { printf '[setup] %s\n' "$*" >&2; }

if ! python3 -c 'import deltalake, pyarrow' 2>/dev/null; then
  log "installing Python deltalake + pyarrow (independent Delta reader)"
  python3 -m pip install --quiet --disable-pip-version-check 'deltalake>=1.0,<2' 'pyarrow>=15'
fi

if [ ! -x "$TOOLS/node_modules/.bin/azurite-blob" ]; then
  command -v npm >/dev/null || { log "npm is missing: apt-get install -y nodejs npm"; exit 1; }
  log "installing Azurite into $TOOLS"
  (cd "$TOOLS" && npm install --silent --no-audit --no-fund --prefix . azurite@3 >/dev/null)
fi
log "ready"
