#!/usr/bin/env bash
# Supply-chain checks with cargo-deny (deny.toml): licenses, banned and duplicate crates,
# crate sources, and RustSec advisories. cargo-deny is built into tests/.tools/deny.
# The advisory database lives on GitHub; where this machine cannot reach it (our build
# machines reach only the package registries), the advisories check says SKIPPED loudly and
# the other checks still run and fail the build on a violation.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS=tests/.tools
DENY_VERSION=0.20.2
DENY="$TOOLS/deny/bin/cargo-deny"
if [ "$("$DENY" --version 2>/dev/null | grep -o '[0-9.]*$')" != "$DENY_VERSION" ]; then
  echo "[security] building cargo-deny $DENY_VERSION into $TOOLS/deny" >&2
  cargo install --quiet --locked --root "$TOOLS/deny" "cargo-deny@$DENY_VERSION"
fi
"$DENY" --log-level error check licenses bans sources
echo "[security] licenses, bans, sources: ok"
if timeout 60 "$DENY" --log-level error fetch db >/dev/null 2>&1; then
  "$DENY" --log-level error check advisories
  echo "[security] advisories: ok"
else
  echo "[security] advisories: SKIPPED - the RustSec database (github.com/RustSec/advisory-db) is unreachable from this machine; run tests/security.sh where it is" >&2
fi
