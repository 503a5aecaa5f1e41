#!/usr/bin/env bash
# Installs what the test suite needs on a clean Debian machine with Rust, into the repo
# (tests/.tools) where possible. Idempotent: a second run installs nothing.
#   - A Python virtualenv (tests/.tools/venv) with `deltalake` + `pyarrow` (the independent
#     Delta reader the tests check tables with) and pycep-parser, checkov, pytest (infra tests).
#   - Azurite (npm): a real Azure Blob endpoint for the az:// table and dead-letter tests.
#   - Prism (npm): a mock that validates requests against the AI Search OpenAPI spec.
#   - redis-server (Debian): the real Redis the Redis sink tests start on free ports.
#   - libssl-dev + pkg-config (Debian): OpenSSL for librdkafka (Kafka sink) and the Event Hubs
#     AMQP stack, linked dynamically in test builds (the package links it statically).
#   - tansu (crates.io, built from source, about 8 minutes on 2 cores): a Kafka-protocol broker
#     the Kafka sink tests start with in-memory storage on free ports.
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

if ! command -v redis-server >/dev/null || ! command -v openssl >/dev/null \
  || ! command -v pkg-config >/dev/null || ! pkg-config --exists openssl 2>/dev/null; then
  log "installing redis-server, openssl, libssl-dev and pkg-config (apt)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  # policy-rc.d keeps the package from starting a system-wide server we do not use.
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null && $SUDO chmod +x /usr/sbin/policy-rc.d
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends redis-server redis-tools openssl libssl-dev pkg-config >/dev/null
  $SUDO rm -f /usr/sbin/policy-rc.d
fi

TANSU_VERSION=0.6.0
if [ "$("$TOOLS/tansu/bin/tansu" --version 2>/dev/null | grep -o '[0-9.]*$')" != "$TANSU_VERSION" ]; then
  log "building the tansu Kafka broker $TANSU_VERSION into $TOOLS/tansu (about 8 minutes)"
  cargo install --quiet --locked --root "$TOOLS/tansu" "tansu@$TANSU_VERSION" \
    --no-default-features --features dynostore
fi
log "ready"
