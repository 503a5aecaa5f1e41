#!/usr/bin/env bash
# The whole test suite, from a clean clone: installs what the tests need (tests/setup.sh),
# then runs every Rust test. Services the tests use (Azurite, ...) are started by the tests
# themselves on free 127.0.0.1 ports and stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup.sh
echo "== infra templates (pytest: Bicep <-> ARM in step, checkov) =="
tests/.tools/venv/bin/python -m pytest tests/infra -q -p no:cacheprovider
echo "== supply chain (cargo deny: licenses, bans, sources, advisories) =="
bash tests/security.sh
echo "== Rust tests =="
cargo test --locked --lib --bins --tests 2>&1
echo "== deployable package (glibc 2.28 baseline) =="
bash scripts/package.sh
bash tests/check_package.sh
